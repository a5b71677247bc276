"""`portcullis serve --kubernetes` against a fake API server: objects in, routes served within
1 s, honest status written by server-side apply, deletes, missing Secrets."""

from __future__ import annotations

import re
import time

import openai
import pytest

from harness import CLIENT_KEY, PROVIDER_KEY, ALT_PROVIDER_KEY, assert_openai_error_shape
from objects import NS, cond_is, condition, provider, proxy, secret, wait_until

DEADLINE = 1.0  # issue 5: from the API server change to the data plane serving it
MESSAGES = [{"role": "user", "content": "hi"}]
SERVICE = "gw"
URL = f"http://{SERVICE}.portcullis-system.svc:8080/v1/model-router/ai.team-a"
ENV = {"PORTCULLIS_SERVICE_NAME": SERVICE}


def chat(gw, proxy_id: str = "ai.team-a", timeout: float = 5.0) -> str:
    client = gw.router_client(proxy=proxy_id, timeout=timeout)
    return client.chat.completions.create(model="openai:gpt-test", messages=MESSAGES).choices[0].message.content


def standard(apiserver, fake, key: str = PROVIDER_KEY) -> None:
    apiserver.apply(secret("openai-key", key))
    apiserver.apply(provider("openai", fake.base_url))
    apiserver.apply(proxy("team-a"))


def test_create_serves_within_a_second_and_status_is_written(apiserver, fake, start_kube_gateway):
    gw = start_kube_gateway(env=ENV)
    # Nothing configured yet: ready (listed), and the proxy is unknown.
    with pytest.raises(openai.NotFoundError):
        chat(gw)

    standard(apiserver, fake)
    elapsed = wait_until(lambda: chat(gw, timeout=2) == "echo: hi", timeout=5)
    assert elapsed is not None, f"the proxy never answered.\n{gw.log_tail()}"
    assert elapsed < DEADLINE, f"served {elapsed:.2f}s after the objects were created (> {DEADLINE}s)"

    # The provider's key went upstream, the client's never did.
    sent = fake.requests_to("/v1/chat/completions")[-1]
    assert sent.header("authorization") == f"Bearer {PROVIDER_KEY}"
    assert CLIENT_KEY not in str(sent.headers)

    # Status, written by server-side apply on /status by the lease holder.
    assert wait_until(lambda: cond_is(apiserver.get("LlmProxy", NS, "team-a"), "Programmed", "True"), 10), \
        f"{apiserver.get('LlmProxy', NS, 'team-a')}\n{gw.log_tail()}"
    px = apiserver.get("LlmProxy", NS, "team-a")
    st = px["status"]
    assert st["url"] == URL
    assert st["observedGeneration"] == px["metadata"]["generation"] == 1
    for t in ("Accepted", "ResolvedRefs", "Programmed"):
        c = condition(px, t)
        assert c["status"] == "True" and c["observedGeneration"] == 1 and c["reason"] and c["message"], c
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", c["lastTransitionTime"]), c

    assert wait_until(lambda: cond_is(apiserver.get("LlmProvider", NS, "openai"), "ModelsDiscovered", "True"), 10)
    pv = apiserver.get("LlmProvider", NS, "openai")
    assert pv["status"]["models"] == 2
    assert pv["status"]["observedGeneration"] == 1
    assert cond_is(pv, "Accepted", "True") and cond_is(pv, "ResolvedRefs", "True")
    assert cond_is(pv, "CredentialsReady", "True", "KeyPresent")
    assert cond_is(pv, "ModelsDiscovered", "True", "StaticModels")

    writes = apiserver.status_writes()
    assert writes, "no status write"
    for w in writes:
        assert w.verb == "PATCH" and w.content_type == "application/apply-patch+yaml", w
        assert w.query.get("fieldManager") == ["portcullis"], w.query
        assert w.token == "replica-a"
    # Only status was written: no spec or metadata write to the custom resources.
    assert not [w for w in apiserver.writes if w.resource in ("llmproviders", "llmproxies")]

    # No write storm: with nothing changing, nothing more is written.
    time.sleep(3)
    count = len(apiserver.status_writes())
    time.sleep(3)
    assert len(apiserver.status_writes()) == count, [
        (w.resource, w.name, w.body) for w in apiserver.status_writes()[count:]]

    # The apply latency is measured.
    metrics = gw.metrics()
    m = re.search(r"^portcullis_config_apply_seconds_count (\d+)", metrics, re.M)
    assert m and int(m.group(1)) >= 2, metrics
    assert 'portcullis_config_reloads_total{source="kubernetes"' in metrics
