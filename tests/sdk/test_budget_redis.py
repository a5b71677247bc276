"""LlmBudget with the Redis store: one budget shared by every replica, against a real
`redis-server` on a free 127.0.0.1 port (started and stopped by the fixture)."""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

from budget_support import RedisServer, budget_doc, client_keys, metric, redis_server, wait_for  # noqa: F401
from harness import PROVIDER_KEY, docs, free_port, provider_doc, secret_doc
from test_budget import proxy


def redis_secret(url: str) -> str:
    return ("apiVersion: v1\nkind: Secret\nmetadata: {name: budget-redis, namespace: ai}\n"
            f"stringData: {{url: \"{url}\"}}\n")


def config(fake, redis, limits, on_unavailable=None) -> str:
    return docs(secret_doc("openai-key", PROVIDER_KEY), client_keys(), redis_secret(redis.url),
                provider_doc("openai", fake.base_url), proxy(),
                budget_doc(limits, store={"redis": {"urlSecretRef": {"name": "budget-redis", "key": "url"}}},
                           on_unavailable=on_unavailable))


BODY = {"model": "openai:gpt-test", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}


def post(gw, body=BODY):
    return gw.raw("POST", "/v1/model-router/ai.team-a/chat/completions", body)


def redis_counters(redis) -> dict[str, int]:
    """Every budget counter in Redis: key → value (not the short-lived admission markers)."""
    reply = redis.command("KEYS", "portcullis:budget:*").decode()
    keys = [line for line in reply.split("\r\n") if line.startswith("portcullis:") and ":admission:" not in line]
    out = {}
    for k in keys:
        v = redis.command("GET", k).decode().split("\r\n")
        out[k] = int(v[1]) if len(v) > 1 and v[1] else 0
    return out


def test_two_replicas_share_one_request_limit_exactly(fake, redis_server, start_gateway):  # noqa: F811
    one = start_gateway(config(fake, redis_server, [
        {"name": "team-requests", "per": "proxy", "requests": 20, "window": "1h"}]))
    two = start_gateway()
    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(lambda i: post(one if i % 2 else two).status, range(50)))
    assert statuses.count(200) == 20, statuses
    assert statuses.count(429) == 30, statuses
    assert len(fake.requests_to("/v1/chat/completions", "POST")) == 20
    # The counter lives in Redis, with a TTL (it expires with its window).
    counters = redis_counters(redis_server)
    assert list(counters.values()) == [20], counters
    key = next(iter(counters))
    # The budget is the key's hash tag: every key of one budget is in one Redis Cluster slot.
    assert key.startswith("portcullis:budget:{ai/limits}:team-requests:ai.team-a:")
    ttl = int(redis_server.command("PTTL", key).decode().strip(":\r\n"))
    assert 3_600_000 < ttl <= 2 * 3_600_000 + 1000, ttl


def test_token_budget_across_replicas_is_never_exceeded_by_more_than_in_flight(fake, redis_server,  # noqa: F811
                                                                                 start_gateway):
    limit = 1000
    one = start_gateway(config(fake, redis_server, [
        {"name": "team-tokens", "per": "proxy", "tokens": limit, "window": "1h"}]))
    two = start_gateway()
    reserve = math.ceil(len(json.dumps(BODY).encode()) / 4) + BODY["max_tokens"]
    # Every request is held upstream for a while, so they are all in flight together.
    answer = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-test",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}
    for _ in range(30):
        fake.script(200, answer, delay=0.5)
    with ThreadPoolExecutor(max_workers=30) as pool:
        statuses = list(pool.map(lambda i: post(one if i % 2 else two).status, range(30)))
    admitted = statuses.count(200)
    # In flight together, the replicas never hold more than the limit between them.
    assert admitted == limit // reserve, (admitted, reserve, statuses)
    assert statuses.count(429) == 30 - admitted
    # After settlement Redis holds exactly what the provider reported.
    wait_for(lambda: list(redis_counters(redis_server).values()) == [14 * admitted], 3,
             "settlement in Redis")
    # And the room freed by reconciliation admits more.
    assert post(one).status == 200


def test_stopping_redis_denies_with_503_and_starting_it_again_resumes(fake, redis_server,  # noqa: F811
                                                                        start_gateway):
    gw = start_gateway(config(fake, redis_server, [
        {"name": "team-requests", "per": "proxy", "requests": 100, "window": "1h"}]))
    assert post(gw).status == 200
    redis_server.stop()
    r = post(gw)
    assert r.status == 503, r.text
    assert r.json()["error"]["code"] == "budget_store_unavailable"
    assert "budget-redis" not in r.text and "redis://" not in r.text
    assert len(fake.requests_to("/v1/chat/completions", "POST")) == 1, "nothing went upstream"
    redis_server.start()
    wait_for(lambda: post(gw).status == 200, 10, "admission after Redis came back")
    assert list(redis_counters(redis_server).values()) == [1], "counted in Redis again"
    assert redis_server.url not in gw.log_text()


def test_allow_counts_locally_while_redis_is_down(fake, redis_server, start_gateway):  # noqa: F811
    gw = start_gateway(config(fake, redis_server, [
        {"name": "team-requests", "per": "proxy", "requests": 3, "window": "1h"}], on_unavailable="allow"))
    assert post(gw).status == 200
    redis_server.stop()
    # Admitted, and still limited: counted in the process (which had seen 1 of 3).
    assert [post(gw).status for _ in range(3)] == [200, 200, 429]
    redis_server.start()
    wait_for(lambda: redis_counters(redis_server) != {} or post(gw).status == 200, 10, "Redis in use again")
    assert metric(gw, "portcullis_budget_refusals_total", budget="ai/limits", limit="team-requests") >= 1


def test_a_hung_redis_is_skipped_instead_of_waited_for_on_every_request(fake, redis_server,  # noqa: F811
                                                                         start_gateway):
    gw = start_gateway(config(fake, redis_server, [
        {"name": "team-requests", "per": "proxy", "requests": 100, "window": "1h"},
        {"name": "team-tokens", "per": "identity", "tokens": 100000, "window": "1d"}], on_unavailable="allow"))
    assert post(gw).status == 200
    redis_server.pause()
    try:
        started = time.monotonic()
        statuses = [post(gw).status for _ in range(6)]
        took = time.monotonic() - started
    finally:
        redis_server.resume()
    assert statuses == [200] * 6, statuses
    # The first request waits for the store's timeout (0.75 s); the store is then skipped for
    # a second instead of every request waiting (6 x 0.75 s = 4.5 s).
    assert took < 2.5, f"{took:.2f}s for 6 requests while Redis hung"
    wait_for(lambda: post(gw).status == 200 and sum(redis_counters(redis_server).values()) > 1, 10,
             "Redis in use again")


def test_the_scripts_run_on_a_redis_cluster_node(fake, tmp_path, start_gateway):
    # Cluster mode refuses a script whose keys are in different slots (CROSSSLOT): the
    # budget's hash tag keeps them in one.
    # The cluster bus port is given (by default it is the port + 10000, maybe past 65535).
    cluster = RedisServer(tmp_path / "cluster", ("--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                                                  "--cluster-config-file", "nodes.conf")).start()
    try:
        assert b"OK" in cluster.command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        wait_for(lambda: b"cluster_state:ok" in cluster.command("CLUSTER", "INFO"), 10, "cluster state ok")
        gw = start_gateway(config(fake, cluster, [
            {"name": "team-requests", "per": "proxy", "requests": 2, "window": "1m"},
            {"name": "caller-tokens", "per": "identity", "tokens": 100000, "window": "1d"}]))
        assert [post(gw).status for _ in range(3)] == [200, 200, 429]
        assert len(fake.requests_to("/v1/chat/completions", "POST")) == 2
        wait_for(lambda: len(redis_counters(cluster)) == 2, 5, "both limits counted in the cluster")
    finally:
        cluster.stop()


def test_an_admission_whose_answer_is_lost_is_undone(fake, redis_server, start_gateway):  # noqa: F811
    import threading
    gw = start_gateway(config(fake, redis_server, [
        {"name": "team-requests", "per": "proxy", "requests": 100, "window": "1h"}]))
    assert post(gw).status == 200
    wait_for(lambda: list(redis_counters(redis_server).values()) == [1], 3, "the first request counted")
    # Another client keeps Redis busy for 1.2 s: the gateway's admission waits in line, the
    # gateway gives up after 0.75 s (deny: 503), and then Redis runs the admission anyway.
    busy = ("local s = redis.call('TIME') repeat local t = redis.call('TIME') "
            "until (t[1] - s[1]) * 1000000 + (t[2] - s[2]) > 1200000 return 1")
    blocker = threading.Thread(target=lambda: redis_server.command("EVAL", busy, "0"))
    blocker.start()
    time.sleep(0.1)
    r = post(gw)
    blocker.join()
    assert r.status == 503, r.text
    assert len(fake.requests_to("/v1/chat/completions", "POST")) == 1, "the refused request never went upstream"
    # The late admission is undone: Redis holds only the request that was served.
    wait_for(lambda: list(redis_counters(redis_server).values()) == [1], 8, "the lost admission undone")
    time.sleep(1.0)
    assert list(redis_counters(redis_server).values()) == [1], "undone once"
