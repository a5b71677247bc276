"""`LlmBudget` through the (fake) API server: takes effect within a second, its status shows
the most-used keys of each limit, deleting it lifts the limit."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from objects import NS, cond_is, condition, provider, proxy, secret, wait_until
from harness import PROVIDER_KEY

DEADLINE = 1.0
MESSAGES = [{"role": "user", "content": "hi"}]


def budget(requests: int = 2, window: str = "1m") -> dict:
    return {"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmBudget",
            "metadata": {"name": "limits", "namespace": NS},
            "spec": {"targetRefs": [{"name": "team-a"}],
                     "limits": [{"name": "team-rpm", "per": "proxy", "requests": requests, "window": window}]}}


def status(gw) -> int:
    c = gw.router_client(timeout=5)
    try:
        c.chat.completions.create(model="openai:gpt-test", messages=MESSAGES)
        return 200
    except openai.RateLimitError:
        return 429


def test_budget_applies_within_a_second_shows_usage_and_deleting_lifts_it(apiserver, fake, start_kube_gateway):
    gw = start_kube_gateway()
    apiserver.apply(secret("openai-key", PROVIDER_KEY))
    apiserver.apply(provider("openai", fake.base_url))
    apiserver.apply(proxy("team-a"))
    assert wait_until(lambda: status(gw) == 200, 5) is not None, gw.log_tail()
    assert [status(gw) for _ in range(3)] == [200, 200, 200], "no budget yet: no limit"

    apiserver.apply(budget(requests=2))
    # Within a second the limit counts: at most two more requests pass, then a 429.
    took = wait_until(lambda: status(gw) == 429, 5, interval=0.05)
    assert took is not None, gw.log_tail()
    assert took < DEADLINE, f"the budget took {took:.2f}s to apply"

    # Status: conditions and the most-used key of the limit, written by the leader.
    # Two requests were admitted; the status may first show only one of them (it is written
    # at most every 2 s), so wait for both.
    def counted():
        b = apiserver.get("LlmBudget", NS, "limits")
        usage = (b or {}).get("status", {}).get("usage") or []
        return b if b and cond_is(b, "Programmed", "True") and usage and int(usage[0]["used"]) >= 2 else None
    assert wait_until(counted, 10), apiserver.get("LlmBudget", NS, "limits")
    b = apiserver.get("LlmBudget", NS, "limits")
    assert cond_is(b, "Accepted", "True") and cond_is(b, "ResolvedRefs", "True")
    assert b["status"]["observedGeneration"] == 1 and b["status"]["store"] == "inProcess"
    usage = b["status"]["usage"]
    assert usage[0]["limit"] == "team-rpm" and usage[0]["key"] == "ai.team-a", usage
    assert usage[0]["max"] == "2" and int(usage[0]["used"]) >= 2 and usage[0]["resetsAt"].endswith("Z"), usage

    # A broken edit keeps the last good version counting, and says so.
    bad = budget(requests=2)
    bad["spec"]["limits"][0]["per"] = "team"
    apiserver.apply(bad)
    assert wait_until(lambda: cond_is(apiserver.get("LlmBudget", NS, "limits"), "Accepted", "False"), 10)
    c = condition(apiserver.get("LlmBudget", NS, "limits"), "Accepted")
    assert c["reason"] == "InvalidSpec" and "unknown per `team`" in c["message"], c
    assert cond_is(apiserver.get("LlmBudget", NS, "limits"), "Programmed", "False", "Invalid")
    assert status(gw) == 429, "the last good version keeps counting"

    # Deleting the budget lifts the limit within a second.
    apiserver.delete("LlmBudget", NS, "limits")
    took = wait_until(lambda: status(gw) == 200, 5, interval=0.05)
    assert took is not None and took < DEADLINE, took


def test_missing_proxy_and_redis_secret_are_reported(apiserver, fake, start_kube_gateway):
    start_kube_gateway()
    apiserver.apply(secret("openai-key", PROVIDER_KEY))
    apiserver.apply(provider("openai", fake.base_url))
    apiserver.apply(proxy("team-a"))
    b = budget()
    b["spec"]["targetRefs"] = [{"name": "team-a"}, {"name": "ghost"}]
    b["spec"]["store"] = {"redis": {"urlSecretRef": {"name": "budget-redis"}}}
    apiserver.apply(b)
    assert wait_until(lambda: cond_is(apiserver.get("LlmBudget", NS, "limits"), "ResolvedRefs", "False"), 10)
    c = condition(apiserver.get("LlmBudget", NS, "limits"), "ResolvedRefs")
    assert c["reason"] in ("ProxyNotFound", "SecretNotFound")
    assert "LlmProxy ai/ghost not found" in c["message"] and "Secret ai/budget-redis not found" in c["message"], c
    assert cond_is(apiserver.get("LlmBudget", NS, "limits"), "Programmed", "False", "Invalid")


def used(apiserver, limit: str = "team-rpm") -> int:
    b = apiserver.get("LlmBudget", NS, "limits") or {}
    usage = [u for u in (b.get("status") or {}).get("usage") or [] if u["limit"] == limit]
    return int(usage[0]["used"]) if usage else 0


def test_usage_under_steady_traffic_is_written_at_most_every_two_seconds(apiserver, fake, start_kube_gateway):
    """Each status write comes back through the watch; under traffic the usage differs on every
    pass, which must not become a write per pass: usage alone is written at most every 2 s per
    budget, and still shows the usage growing."""
    gw = start_kube_gateway()
    apiserver.apply(secret("openai-key", PROVIDER_KEY))
    apiserver.apply(provider("openai", fake.base_url))
    apiserver.apply(proxy("team-a"))
    # The request limit's window is long: its estimate does not decay during the test. The token
    # limit's is short: its sliding estimate (the previous bucket, weighted by how much of it is
    # still in the window) changes every few milliseconds under traffic, as a busy per-minute
    # token limit's does.
    b = budget(requests=100_000, window="1h")
    b["spec"]["limits"].append({"name": "team-tokens", "per": "proxy", "tokens": 100_000_000, "window": "2s"})
    apiserver.apply(b)
    assert wait_until(lambda: cond_is(apiserver.get("LlmBudget", NS, "limits"), "Programmed", "True"), 10), \
        apiserver.get("LlmBudget", NS, "limits")
    assert wait_until(lambda: status(gw) == 200, 5) is not None, gw.log_tail()
    time.sleep(2.5)  # the writes for the budget's conditions and the first request settle

    before = len(apiserver.status_writes("llmbudgets", "limits"))
    seen: list[int] = []
    stop = threading.Event()

    def watch_usage() -> None:
        while not stop.is_set():
            seen.append(used(apiserver))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_usage)
    watcher.start()
    client = gw.router_client(timeout=5)
    sent, t0 = 0, time.monotonic()
    try:
        while time.monotonic() - t0 < 5.0:  # ~20 requests/s for 5 s
            client.chat.completions.create(model="openai:gpt-test", messages=MESSAGES)
            sent += 1
            time.sleep(max(0.0, t0 + sent * 0.05 - time.monotonic()))
        during = len(apiserver.status_writes("llmbudgets", "limits")) - before
    finally:
        stop.set()
        watcher.join()
    assert sent >= 60, f"only {sent} requests in 5 s"
    assert during <= 5, f"{during} status writes of the LlmBudget in 5 s of traffic ({sent} requests)"
    # The status showed the usage growing while traffic flowed...
    distinct = sorted(set(seen))
    assert len([u for u in distinct if u > 1]) >= 2, f"usage seen during traffic: {distinct}"
    # ... and catches up with every request within ~2 s of the last one (no further traffic).
    assert wait_until(lambda: used(apiserver) >= sent + 1, 4), (used(apiserver), sent)
