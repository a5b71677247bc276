"""`LlmBudget` through the (fake) API server: takes effect within a second, its status shows
the most-used keys of each limit, deleting it lifts the limit."""

from __future__ import annotations

import openai
import pytest

from objects import NS, cond_is, condition, provider, proxy, secret, wait_until
from harness import PROVIDER_KEY

DEADLINE = 1.0
MESSAGES = [{"role": "user", "content": "hi"}]


def budget(requests: int = 2) -> dict:
    return {"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmBudget",
            "metadata": {"name": "limits", "namespace": NS},
            "spec": {"targetRefs": [{"name": "team-a"}],
                     "limits": [{"name": "team-rpm", "per": "proxy", "requests": requests, "window": "1m"}]}}


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
    def counted():
        b = apiserver.get("LlmBudget", NS, "limits")
        return b if b and cond_is(b, "Programmed", "True") and b["status"].get("usage") else None
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
