"""OpenAI-shaped errors from the gateway, as the SDK and a raw client see them."""

from __future__ import annotations

import json
import time

import openai
import pytest

from harness import (PROVIDER_KEY, assert_no_secret, assert_openai_error_shape, closed_port, docs,
                     provider_doc, proxy_doc, secret_doc, send_oversized, standard_config)

MESSAGES = [{"role": "user", "content": "hi"}]

RATE_LIMIT_BODY = {
    "error": {
        "message": "Rate limit reached for gpt-test in organization org-fake on requests per min (RPM).",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}


def _status_error_body(err: openai.APIStatusError) -> dict:
    body = err.response.json()
    assert_no_secret(err.response.text, "error body")
    return body


def test_unknown_prefix_is_404_naming_valid_prefixes(fake, gw):
    with pytest.raises(openai.NotFoundError) as ei:
        gw.router_client().chat.completions.create(model="nosuch:model", messages=MESSAGES)
    err = assert_openai_error_shape(_status_error_body(ei.value))
    assert "openai" in err["message"], f"message must list the valid prefixes: {err['message']!r}"
    assert "nosuch" in err["message"]
    assert fake.requests_to("/v1/chat/completions") == []


def test_unknown_proxy_is_404(fake, gw):
    with pytest.raises(openai.NotFoundError) as ei:
        gw.router_client(proxy="ai.no-such-proxy").chat.completions.create(model="openai:gpt-test",
                                                                             messages=MESSAGES)
    assert_openai_error_shape(_status_error_body(ei.value))
    with pytest.raises(openai.NotFoundError):
        gw.router_client(proxy="ai.no-such-proxy").models.list()
    with pytest.raises(openai.NotFoundError) as ei:
        gw.native_client(proxy="ai.no-such-proxy").chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert_openai_error_shape(_status_error_body(ei.value))
    assert fake.all_requests() == []


def test_unknown_native_prefix_is_404(fake, gw):
    with pytest.raises(openai.NotFoundError):
        gw.native_client(prefix="nosuch").chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert fake.all_requests() == []


@pytest.mark.parametrize("route", ["router", "native"])
def test_upstream_429_passes_through(fake, gw, route):
    fake.script(429, RATE_LIMIT_BODY, headers={"retry-after": "7", "x-ratelimit-remaining-requests": "0"})
    client = gw.router_client() if route == "router" else gw.native_client()
    model = "openai:gpt-test" if route == "router" else "gpt-test"
    with pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert ei.value.status_code == 429
    assert _status_error_body(ei.value) == RATE_LIMIT_BODY, "upstream error body must pass through unchanged"
    assert ei.value.response.headers.get("retry-after") == "7", "retry-after must reach the client"


@pytest.mark.parametrize("route", ["router", "native"])
def test_upstream_400_passes_through(fake, gw, route):
    body = {"error": {"message": "Invalid value for 'temperature'.", "type": "invalid_request_error",
                      "param": "temperature", "code": "invalid_value"}}
    fake.script(400, body)
    client = gw.router_client() if route == "router" else gw.native_client()
    model = "openai:gpt-test" if route == "router" else "gpt-test"
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=model, messages=MESSAGES, temperature=9)
    assert _status_error_body(ei.value) == body


def _down_config(fake_url: str) -> str:
    return docs(
        secret_doc("openai-key", PROVIDER_KEY),
        provider_doc("openai", f"http://127.0.0.1:{closed_port()}/v1"),
        proxy_doc("team-a", ["openai"]),
    )


@pytest.mark.parametrize("route", ["router", "native"])
def test_upstream_unreachable_is_502(fake, start_gateway, route):
    gw = start_gateway(_down_config(fake.base_url))
    client = gw.router_client() if route == "router" else gw.native_client()
    model = "openai:gpt-test" if route == "router" else "gpt-test"
    with pytest.raises(openai.APIStatusError) as ei:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert ei.value.status_code == 502, ei.value.response.text
    assert_openai_error_shape(_status_error_body(ei.value))


@pytest.mark.parametrize("route", ["router", "native"])
def test_upstream_timeout_is_504(fake, start_gateway, route):
    gw = start_gateway(standard_config(fake.base_url, timeout="1s"))
    fake.script(200, {"never": "sent in time"}, delay=4.0, match=lambda r: r.path == "/v1/chat/completions")
    client = gw.router_client(timeout=10) if route == "router" else gw.native_client(timeout=10)
    model = "openai:gpt-test" if route == "router" else "gpt-test"
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as ei:
        client.chat.completions.create(model=model, messages=MESSAGES)
    elapsed = time.monotonic() - t0
    assert ei.value.status_code == 504, ei.value.response.text
    assert_openai_error_shape(_status_error_body(ei.value))
    assert 0.8 <= elapsed < 3.5, f"spec.timeout 1s should end the request after ~1s, took {elapsed:.2f}s"


def test_slow_stream_with_steady_bytes_is_not_cut_by_timeout(fake, start_gateway):
    """`timeout` bounds waiting for the upstream; a stream keeps going while bytes flow."""
    gw = start_gateway(standard_config(fake.base_url, timeout="1s"))
    fake.stream_pieces = ["a", "b", "c", "d"]
    fake.chunk_delay = 0.5  # 5 gaps of 0.5 s = 2.5 s in total, > 1 s
    chunks = list(gw.router_client(timeout=15).chat.completions.create(
        model="openai:gpt-test", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "abcd"


def test_malformed_json_is_400(fake, gw):
    r = gw.raw("POST", "/v1/model-router/ai.team-a/chat/completions", '{"model": "openai:gpt-test", "messages": [')
    assert r.status == 400, r.text
    assert_openai_error_shape(r.json())
    assert fake.requests_to("/v1/chat/completions") == []


def test_missing_model_is_400(fake, gw):
    r = gw.raw("POST", "/v1/model-router/ai.team-a/chat/completions", {"messages": MESSAGES})
    assert r.status == 400, r.text
    err = assert_openai_error_shape(r.json())
    assert "model" in err["message"].lower() or err.get("param") == "model", err
    assert fake.requests_to("/v1/chat/completions") == []


def test_body_over_limit_is_413(fake, gw):
    size = 33 * 1024 * 1024  # default limit is 32 MiB
    r = send_oversized(gw.port, "/v1/model-router/ai.team-a/chat/completions", size)
    assert r.status == 413, r.body[:500]
    assert_openai_error_shape(json.loads(r.body))
    assert fake.requests_to("/v1/chat/completions") == []


CLIMBING_TARGETS = [
    "/v1/openai/ai.team-a/../../../etc/passwd",
    "/v1/openai/ai.team-a/models/../../secret",
    "/v1/openai/ai.team-a/..",
    "/v1/openai/ai.team-a/models%2F..%2F..%2Fadmin",
    "/v1/openai/ai.team-a/%2e%2e/%2e%2e/admin",
    "/v1/openai/ai.team-a/%2E%2E%2Fadmin",
    "/v1/openai/ai.team-a/http://127.0.0.1:1/steal",
    "/v1/openai/ai.team-a/https:%2F%2Fexample.invalid%2Fsteal",
]


@pytest.mark.parametrize("target", CLIMBING_TARGETS)
def test_native_path_climbing_is_400(fake, gw, target):
    r = gw.raw("GET", target)
    assert r.status == 400, f"{target} -> {r.status} {r.text[:300]}"
    assert_openai_error_shape(r.json())
    assert fake.all_requests() == [], f"request reached the upstream: {[q.target for q in fake.all_requests()]}"


def test_absolute_form_request_target_cannot_pick_the_upstream(fake, gw):
    """An absolute-form request line must not choose the upstream host."""
    from fakes.openai_upstream import FakeOpenAI

    other = FakeOpenAI().start()
    try:
        target = f"http://127.0.0.1:{other.port}/v1/openai/ai.team-a/models"
        r = gw.raw("GET", target)
        assert other.all_requests() == [], "the client chose the upstream host"
        if r.status == 200:  # served from the configured upstream is fine
            assert fake.requests_to("/v1/models", "GET")
        else:
            assert r.status == 400, r.text
    finally:
        other.stop()
