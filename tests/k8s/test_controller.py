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


class Load:
    """Router requests in a loop on a background thread; every failure is recorded."""

    def __init__(self, gw, proxy_id: str = "ai.team-a") -> None:
        import threading
        self.client = gw.router_client(proxy=proxy_id, timeout=10)
        self.ok = 0
        self.failures: list[str] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        deadline = time.monotonic() + 60
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            try:
                text = self.client.chat.completions.create(model="openai:gpt-test", messages=MESSAGES) \
                    .choices[0].message.content
                if text == "echo: hi":
                    self.ok += 1
                else:
                    self.failures.append(f"wrong content {text!r}")
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failures.append(f"{type(e).__name__}: {e}")

    def __enter__(self) -> "Load":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(timeout=20)


def test_base_url_change_switches_upstream_without_a_failed_request(apiserver, fake, fake2, start_kube_gateway):
    gw = start_kube_gateway(env=ENV)
    standard(apiserver, fake)
    assert wait_until(lambda: chat(gw) == "echo: hi", timeout=5) is not None, gw.log_tail()

    loads = [Load(gw), Load(gw)]
    for load in loads:
        load.__enter__()
    try:
        assert wait_until(lambda: all(load.ok > 2 for load in loads), timeout=5) is not None
        before = len(fake2.requests_to("/v1/chat/completions"))
        assert before == 0
        apiserver.apply(provider("openai", fake2.base_url))
        elapsed = wait_until(lambda: len(fake2.requests_to("/v1/chat/completions")) > 0, timeout=5, interval=0.005)
        assert elapsed is not None, f"the new baseUrl never took effect.\n{gw.log_tail()}"
        assert elapsed < DEADLINE, f"switched after {elapsed:.2f}s (> {DEADLINE}s)"
        # Once switched, everything goes to the new upstream.
        time.sleep(0.3)
        old_count = len(fake.requests_to("/v1/chat/completions"))
        time.sleep(0.5)
        assert len(fake.requests_to("/v1/chat/completions")) == old_count
    finally:
        for load in loads:
            load.__exit__()
    failures = [f for load in loads for f in load.failures]
    assert not failures, failures[:5]
    assert sum(load.ok for load in loads) > 20
    # The new upstream got the provider's key too.
    assert fake2.requests_to("/v1/chat/completions")[-1].header("authorization") == f"Bearer {PROVIDER_KEY}"
    # The provider's new generation is reported.
    assert wait_until(lambda: apiserver.get("LlmProvider", NS, "openai")["status"]["observedGeneration"] == 2, 10)


def test_deleting_the_proxy_makes_the_route_404(apiserver, fake, start_kube_gateway):
    gw = start_kube_gateway(env=ENV)
    standard(apiserver, fake)
    apiserver.apply(proxy("team-b"))
    assert wait_until(lambda: chat(gw) == "echo: hi" and chat(gw, "ai.team-b") == "echo: hi", timeout=5)

    apiserver.delete("LlmProxy", NS, "team-a")

    def gone() -> bool:
        try:
            chat(gw)
        except openai.NotFoundError:
            return True
        return False

    elapsed = wait_until(gone, timeout=5)
    assert elapsed is not None and elapsed < DEADLINE, f"still served after delete ({elapsed})\n{gw.log_tail()}"
    r = gw.raw("POST", "/v1/model-router/ai.team-a/chat/completions",
               {"model": "openai:gpt-test", "messages": MESSAGES})
    assert r.status == 404
    assert_openai_error_shape(r.json())
    # The other proxy is untouched.
    assert chat(gw, "ai.team-b") == "echo: hi"


def test_missing_secret_reports_secret_not_found_and_old_routes_keep_serving(apiserver, fake, start_kube_gateway):
    gw = start_kube_gateway(env=ENV)
    standard(apiserver, fake)
    assert wait_until(lambda: chat(gw) == "echo: hi", timeout=5)
    assert wait_until(lambda: cond_is(apiserver.get("LlmProxy", NS, "team-a"), "Programmed", "True"), 10)
    accepted_at = condition(apiserver.get("LlmProxy", NS, "team-a"), "Accepted")["lastTransitionTime"]

    # The provider now names a Secret that does not exist.
    apiserver.apply(provider("openai", fake.base_url, secret_name="missing-key"))
    assert wait_until(lambda: cond_is(apiserver.get("LlmProxy", NS, "team-a"), "ResolvedRefs", "False",
                                      "SecretNotFound"), 10), \
        f"{apiserver.get('LlmProxy', NS, 'team-a')['status']}\n{gw.log_tail()}"
    px = apiserver.get("LlmProxy", NS, "team-a")
    rr = condition(px, "ResolvedRefs")
    assert "ai/missing-key" in rr["message"], rr
    # Contract section 5a: the proxy's own generation is served; Programmed says that its
    # `openai` entry uses the provider's last good version.
    assert cond_is(px, "Programmed", "True", "Programmed"), px["status"]
    assert "entry `openai` uses the last good version (generation 1) of LlmProvider ai/openai" in \
        condition(px, "Programmed")["message"], px["status"]
    assert condition(px, "Accepted")["lastTransitionTime"] == accepted_at, "Accepted did not flip: time kept"
    pv = apiserver.get("LlmProvider", NS, "openai")
    assert cond_is(pv, "ResolvedRefs", "False", "SecretNotFound")
    assert "missing-key" in condition(pv, "ResolvedRefs")["message"]
    assert cond_is(pv, "CredentialsReady", "False")
    assert "its last good version (generation 1) keeps serving" in condition(pv, "ModelsDiscovered")["message"]
    assert pv["status"]["observedGeneration"] == 2

    # The previously programmed route keeps serving, with the old key.
    fake.reset()
    assert chat(gw) == "echo: hi"
    assert fake.requests_to("/v1/chat/completions")[-1].header("authorization") == f"Bearer {PROVIDER_KEY}"

    # A Warning Event names the failure (once, not on every pass).
    def warnings():
        return [w.body for w in apiserver.writes
                if w.resource == "events" and w.verb == "POST" and w.body.get("reason") == "SecretNotFound"
                and "missing-key" in w.body.get("note", "")]

    assert wait_until(lambda: warnings(), 5), [w.body for w in apiserver.writes if w.resource == "events"]
    ev = warnings()[0]
    assert ev["type"] == "Warning"
    assert ev["regarding"]["kind"] in ("LlmProvider", "LlmProxy")
    time.sleep(2.5)
    assert len(warnings()) <= 2, "\n".join(f'{w["regarding"]["kind"]} {w["action"]} {w["metadata"]["name"]} {w["note"][:60]}' for w in warnings())

    # Creating the Secret fixes it: the new key is used within a second.
    apiserver.apply(secret("missing-key", ALT_PROVIDER_KEY, string_data=False))

    def uses_new_key() -> bool:
        chat(gw)
        return fake.requests_to("/v1/chat/completions")[-1].header("authorization") == f"Bearer {ALT_PROVIDER_KEY}"

    elapsed = wait_until(uses_new_key, timeout=5)
    assert elapsed is not None and elapsed < DEADLINE, f"{elapsed}\n{gw.log_tail()}"
    assert wait_until(lambda: cond_is(apiserver.get("LlmProxy", NS, "team-a"), "ResolvedRefs", "True")
                      and cond_is(apiserver.get("LlmProxy", NS, "team-a"), "Programmed", "True"), 10)


def test_switching_to_an_existing_unreferenced_secret(apiserver, fake, start_kube_gateway):
    """A Secret that existed before any provider named it is fetched when one starts to."""
    gw = start_kube_gateway(env=ENV)
    standard(apiserver, fake)
    apiserver.apply(secret("other-key", ALT_PROVIDER_KEY))
    assert wait_until(lambda: chat(gw) == "echo: hi", timeout=5)
    time.sleep(0.3)
    apiserver.apply(provider("openai", fake.base_url, secret_name="other-key"))

    def uses_other_key() -> bool:
        chat(gw)
        return fake.requests_to("/v1/chat/completions")[-1].header("authorization") == f"Bearer {ALT_PROVIDER_KEY}"

    elapsed = wait_until(uses_other_key, timeout=5)
    assert elapsed is not None and elapsed < DEADLINE, f"{elapsed}\n{gw.log_tail()}"
    # Its later rotation is followed by the watch.
    apiserver.apply(secret("other-key", PROVIDER_KEY))
    assert wait_until(lambda: chat(gw) and fake.requests_to("/v1/chat/completions")[-1].header("authorization")
                      == f"Bearer {PROVIDER_KEY}", timeout=5) is not None


def test_models_discovered_status_follows_discovery(apiserver, fake, start_kube_gateway):
    from harness import closed_port

    gw = start_kube_gateway(env=ENV)
    apiserver.apply(secret("openai-key", PROVIDER_KEY))
    # Discovery (no models.static) with an allow filter: 2 of the fake's 4 models.
    p = provider("openai", fake.base_url, static=None)
    p["spec"]["models"] = {"allow": ["gpt-test*"]}
    apiserver.apply(p)
    apiserver.apply(proxy("team-a"))
    assert wait_until(lambda: cond_is(apiserver.get("LlmProvider", NS, "openai"), "ModelsDiscovered", "True",
                                      "Discovered"), 10), \
        f"{apiserver.get('LlmProvider', NS, 'openai').get('status')}\n{gw.log_tail()}"
    assert apiserver.get("LlmProvider", NS, "openai")["status"]["models"] == 2
    models_req = fake.requests_to("/v1/models")[-1]
    assert models_req.header("authorization") == f"Bearer {PROVIDER_KEY}"

    # A provider no proxy uses is not discovered, and says so (Unknown, not True).
    apiserver.apply(provider("spare", fake.base_url, static=None))
    assert wait_until(lambda: cond_is(apiserver.get("LlmProvider", NS, "spare"), "ModelsDiscovered", "Unknown",
                                      "NotInUse"), 10)

    # An unreachable upstream: ModelsDiscovered False with the reason, and a Warning Event.
    apiserver.apply(provider("down", f"http://127.0.0.1:{closed_port()}/v1", static=None))
    apiserver.apply(proxy("team-down", providers=("down",)))
    assert wait_until(lambda: cond_is(apiserver.get("LlmProvider", NS, "down"), "ModelsDiscovered", "False",
                                      "DiscoveryFailed"), 10), apiserver.get("LlmProvider", NS, "down").get("status")
    msg = condition(apiserver.get("LlmProvider", NS, "down"), "ModelsDiscovered")["message"]
    assert "could not reach" in msg and PROVIDER_KEY not in msg
    assert wait_until(lambda: [w for w in apiserver.writes if w.resource == "events"
                               and w.body.get("reason") == "DiscoveryFailed"
                               and w.body["regarding"]["name"] == "down"], 5)


def test_unreferenced_secrets_data_never_reaches_the_gateway(apiserver, fake, start_kube_gateway):
    apiserver.apply(secret("helm-release", "unrelated-SECRET-data"))
    apiserver.apply(secret("other-ns-key", "unrelated-SECRET-data", ns="elsewhere"))
    gw = start_kube_gateway(env=ENV)
    standard(apiserver, fake)
    assert wait_until(lambda: chat(gw) == "echo: hi", timeout=5)
    apiserver.apply(secret("helm-release", "unrelated-SECRET-data-v2"))  # a change it sees as metadata
    time.sleep(0.5)
    served = apiserver.secret_data_served
    assert (NS, "openai-key") in served, served
    assert (NS, "helm-release") not in served and ("elsewhere", "other-ns-key") not in served, served
    # Secrets are watched as metadata only.
    watches = [q for m, path, q in apiserver.requests if path == "/api/v1/secrets" and "watch=true" in q]
    assert watches, apiserver.requests
