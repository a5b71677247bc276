"""`serve --kubernetes` with `spec.clientAuth.apiKeys`: the client-key Secret an LlmProxy
references is read like a provider's key Secret (and only it). While it is missing the proxy
reports `ResolvedRefs=False` (`SecretNotFound`); then the proxy serves callers with a key,
refuses the others, and a rotated key takes effect without a restart."""

from __future__ import annotations

import openai
import pytest

from harness import CLIENT_KEY, PROVIDER_KEY
from objects import NS, cond_is, condition, provider, proxy, secret, wait_until

ROTATED_KEY = "sk-client-rotated-KEY-31c7"


def client_keys(key: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "client-keys", "namespace": NS},
            "type": "Opaque", "stringData": {"team-a-app": key}}


def guarded_proxy() -> dict:
    p = proxy("team-a")
    p["spec"]["clientAuth"] = {"apiKeys": {"secretRef": {"name": "client-keys"}}}
    return p


def status_code(gw, key: str) -> int:
    client = openai.OpenAI(base_url=f"{gw.url}/v1/model-router/ai.team-a", api_key=key, max_retries=0, timeout=5)
    try:
        client.chat.completions.create(model="openai:gpt-test", messages=[{"role": "user", "content": "hi"}])
        return 200
    except openai.APIStatusError as e:
        return e.status_code


def test_client_keys_from_a_secret_the_proxy_references(apiserver, fake, start_kube_gateway):
    gw = start_kube_gateway()
    apiserver.apply(secret("openai-key", PROVIDER_KEY))
    apiserver.apply(provider("openai", fake.base_url))
    apiserver.apply(guarded_proxy())
    # The client-key Secret does not exist yet: a reference problem, named.
    assert wait_until(lambda: cond_is(apiserver.get("LlmProxy", NS, "team-a"), "ResolvedRefs", "False",
                                      "SecretNotFound"), 10), \
        (apiserver.get("LlmProxy", NS, "team-a") or {}).get("status")
    px = apiserver.get("LlmProxy", NS, "team-a")
    assert "client-keys" in condition(px, "ResolvedRefs")["message"]
    assert cond_is(px, "Accepted", "True") and cond_is(px, "Programmed", "False")
    assert status_code(gw, CLIENT_KEY) == 404

    apiserver.apply(client_keys(CLIENT_KEY))

    assert wait_until(lambda: status_code(gw, CLIENT_KEY) == 200, 5) is not None, \
        f"{(apiserver.get('LlmProxy', NS, 'team-a') or {}).get('status')}\n{gw.log_tail()}"
    assert status_code(gw, "sk-not-a-client-key") == 401
    assert wait_until(lambda: cond_is(apiserver.get("LlmProxy", NS, "team-a"), "ResolvedRefs", "True"), 10), \
        condition(apiserver.get("LlmProxy", NS, "team-a"), "ResolvedRefs")
    sent = fake.requests_to("/v1/chat/completions")[-1]
    assert sent.header("authorization") == f"Bearer {PROVIDER_KEY}"

    # Rotation: the new key is accepted, the old one refused, with no restart.
    apiserver.apply(client_keys(ROTATED_KEY))
    assert wait_until(lambda: status_code(gw, ROTATED_KEY) == 200, 5) is not None, gw.log_tail()
    assert status_code(gw, CLIENT_KEY) == 401
    for secret_value in (ROTATED_KEY,):
        assert secret_value not in gw.log_text()
