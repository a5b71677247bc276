"""100 configuration changes through the API server while native and Model Router requests,
streamed and not, run: zero failed requests, and every change is served (issue 11, item 8)."""

from __future__ import annotations

import time

from churn import finish_traffic, start_traffic
from harness import PROVIDER_KEY
from objects import NS, provider, proxy, secret, wait_until

RELOADS = 100


def test_100_api_changes_under_native_router_and_streaming_load(apiserver, fake, start_kube_gateway):
    gw = start_kube_gateway()
    apiserver.apply(secret("openai-key", PROVIDER_KEY))
    apiserver.apply(provider("openai", fake.base_url, static=["gpt-test", "gpt-r0"]))
    apiserver.apply(proxy("team-a"))
    models = lambda: [m.id for m in gw.router_client(timeout=5).models.list()]  # noqa: E731
    assert wait_until(lambda: "openai:gpt-r0" in models(), 10), gw.log_tail()
    fake.stream_pieces = ["echo", ": ", "lo", "ad"]
    fake.chunk_delay = 0.02
    flows = start_traffic(gw)
    took: list[float] = []
    try:
        for i in range(1, RELOADS + 1):
            t0 = time.monotonic()
            apiserver.apply(provider("openai", fake.base_url, static=["gpt-test", f"gpt-r{i}"]))
            if i % 2:
                apiserver.apply(proxy("team-b"))
            else:
                apiserver.delete("LlmProxy", NS, "team-b")
            while f"openai:gpt-r{i}" not in models():
                assert time.monotonic() - t0 < 5, f"change {i} never served\n{gw.log_tail()}"
                time.sleep(0.01)
            took.append(time.monotonic() - t0)
    finally:
        finish_traffic(flows)
    took.sort()
    assert took[int(len(took) * 0.9)] < 1.0, f"p90 of {RELOADS} changes: {took[int(len(took) * 0.9)]:.2f}s, " \
                                             f"slowest {took[-1]:.2f}s"
