"""Two replicas against one API server: both serve traffic, only the Lease holder writes
status, and the other takes over when the holder stops (gracefully or not)."""

from __future__ import annotations

import time

from harness import PROVIDER_KEY
from objects import LEASE_NAMESPACE, NS, provider, proxy, secret, wait_until

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(gw) -> str:
    client = gw.router_client(proxy="ai.team-a", timeout=3)
    return client.chat.completions.create(model="openai:gpt-test", messages=MESSAGES).choices[0].message.content


def holder(apiserver):
    lease = apiserver.get("Lease", LEASE_NAMESPACE, "portcullis-status")
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


def generation_reported(apiserver, gen: int) -> bool:
    px = apiserver.get("LlmProvider", NS, "openai")
    return (px.get("status") or {}).get("observedGeneration") == gen


def writers_since(apiserver, t0: float) -> set[str]:
    return {w.token for w in apiserver.status_writes() if w.time >= t0}


def test_only_the_lease_holder_writes_status_and_the_other_takes_over(apiserver, fake, fake2, start_kube_gateway):
    a = start_kube_gateway("replica-a")
    assert wait_until(lambda: holder(apiserver) == "replica-a", 5)
    b = start_kube_gateway("replica-b")

    apiserver.apply(secret("openai-key", PROVIDER_KEY))
    apiserver.apply(provider("openai", fake.base_url))
    apiserver.apply(proxy("team-a"))
    # Both replicas serve traffic.
    assert wait_until(lambda: chat(a) == "echo: hi" and chat(b) == "echo: hi", 5)
    assert wait_until(lambda: generation_reported(apiserver, 1), 10)
    time.sleep(2)  # several lease renewals and status passes
    assert holder(apiserver) == "replica-a"
    assert writers_since(apiserver, 0) == {"replica-a"}, "only the holder writes status"
    events = {w.token for w in apiserver.writes if w.resource == "events"}
    assert events <= {"replica-a"}

    # Graceful stop: the holder releases the Lease and the other takes over at once.
    a.stop()
    assert wait_until(lambda: holder(apiserver) == "replica-b", 3), holder(apiserver)
    t0 = time.time()
    apiserver.apply(provider("openai", fake2.base_url))
    assert wait_until(lambda: generation_reported(apiserver, 2), 10), b.log_tail()
    assert writers_since(apiserver, t0) == {"replica-b"}
    assert chat(b) == "echo: hi"

    # Crash (no release): the Lease expires (2 s in these tests) and a new replica takes over.
    c = start_kube_gateway("replica-c")
    time.sleep(1)
    assert holder(apiserver) == "replica-b"
    b.kill()
    elapsed = wait_until(lambda: holder(apiserver) == "replica-c", 10)
    assert elapsed is not None, c.log_tail()
    assert elapsed >= 1.0, f"took over after {elapsed:.2f}s: before the Lease could expire"
    t1 = time.time()
    apiserver.apply(provider("openai", fake.base_url))
    assert wait_until(lambda: generation_reported(apiserver, 3), 10), c.log_tail()
    assert writers_since(apiserver, t1) == {"replica-c"}
    lease = apiserver.get("Lease", LEASE_NAMESPACE, "portcullis-status")
    assert lease["spec"]["leaseTransitions"] >= 2
    # Lease writes carried resourceVersion preconditions: replaced, never blindly overwritten.
    puts = [w for w in apiserver.writes if w.resource == "leases" and w.verb == "PUT"]
    assert puts and all(w.body["metadata"].get("resourceVersion") for w in puts)
