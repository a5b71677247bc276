"""Prometheus metrics on the admin port, driven by real traffic: requests by proxy, provider,
model, route and status; request duration and upstream time-to-first-byte histograms; config
reloads (applied and rejected) in file mode."""

from __future__ import annotations

import re
import time
import urllib.request

import openai
import pytest

from harness import Gateway, standard_config, write_atomically

MESSAGES = [{"role": "user", "content": "hi"}]


def scrape(gw: Gateway) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.admin_port}/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith(("application/openmetrics-text", "text/plain"))
        return r.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the one sample of `name` whose labels include `labels` (0 when absent)."""
    found = []
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_]+)\{(.*)\} (\S+)", line)
        if not m or m[1] != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m[2]))
        if all(have.get(k) == v for k, v in labels.items()):
            found.append(float(m[3]))
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else 0.0


def test_request_metrics_follow_traffic(fake, gw):
    router = gw.router_client()
    router.chat.completions.create(model="openai:gpt-test", messages=MESSAGES)
    list(router.chat.completions.create(model="openai:gpt-test", messages=MESSAGES, stream=True))
    with pytest.raises(openai.NotFoundError):
        router.chat.completions.create(model="nosuch:model", messages=MESSAGES)
    native = openai.OpenAI(base_url=gw.native_base(), api_key="unused", max_retries=0)
    native.chat.completions.create(model="gpt-test", messages=MESSAGES)
    time.sleep(0.2)  # the record is written when the body ends
    text = scrape(gw)
    ok = dict(proxy="ai.team-a", provider="openai", route="router", status="200")
    assert sample(text, "portcullis_requests_total", model="openai:gpt-test", **ok) == 2, text
    assert sample(text, "portcullis_requests_total", route="router", status="404") == 1, text
    assert sample(text, "portcullis_requests_total", proxy="ai.team-a", provider="openai", route="native",
                  status="200") == 1, text
    route = dict(proxy="ai.team-a", provider="openai", route="router")
    assert sample(text, "portcullis_request_duration_seconds_count", **route) == 2, text
    assert sample(text, "portcullis_upstream_ttfb_seconds_count", **route) == 2, text
    assert sample(text, "portcullis_upstream_ttfb_seconds_bucket", le="+Inf", **route) == 2, text


def test_model_label_is_bounded_for_models_the_provider_does_not_list(fake, start_gateway):
    """With discovery (no static list) the router forwards any model ID; only listed models
    become a `model` label, so made-up IDs cannot create unbounded series."""
    gw = start_gateway(standard_config(fake.base_url, static=None))
    router = gw.router_client()
    assert "openai:gpt-test" in [m.id for m in router.models.list()]  # discovery has listed it
    router.chat.completions.create(model="openai:gpt-test", messages=MESSAGES)
    for i in range(3):
        router.chat.completions.create(model=f"openai:made-up-{i}", messages=MESSAGES)
    time.sleep(0.2)  # the record is written when the body ends
    text = scrape(gw)
    ok = dict(proxy="ai.team-a", provider="openai", route="router", status="200")
    assert sample(text, "portcullis_requests_total", model="openai:gpt-test", **ok) == 1, text
    assert sample(text, "portcullis_requests_total", model="other", **ok) == 3, text
    assert "made-up" not in text, text


def test_config_reload_metrics(fake, start_gateway, config_dir):
    gw = start_gateway(standard_config(fake.base_url))
    before = scrape(gw)
    applied = sample(before, "portcullis_config_reloads_total", source="files", result="applied")
    rejected = sample(before, "portcullis_config_reloads_total", source="files", result="rejected")
    write_atomically(config_dir / "portcullis.yaml", standard_config(fake.base_url, static=("gpt-other",)))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sample(scrape(gw), "portcullis_config_reloads_total",
                                                 source="files", result="applied") == applied:
        time.sleep(0.05)
    assert sample(scrape(gw), "portcullis_config_reloads_total", source="files", result="applied") == applied + 1
    write_atomically(config_dir / "portcullis.yaml", "kind: LlmProvider\nspec: [not, a, mapping\n")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sample(scrape(gw), "portcullis_config_reloads_total",
                                                 source="files", result="rejected") == rejected:
        time.sleep(0.05)
    assert sample(scrape(gw), "portcullis_config_reloads_total", source="files", result="rejected") == rejected + 1
