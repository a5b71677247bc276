"""Model Router (`/v1/model-router/{proxy}`) driven by the official `openai` SDK."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from harness import (ALT_PROVIDER_KEY, CLIENT_KEY, PROVIDER_KEY, docs, provider_doc, proxy_doc, secret_doc,
                     standard_config)

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "ping 42"},
]


def assert_upstream_auth(req) -> None:
    """The upstream saw the provider's key, and nothing of the client's."""
    assert req.header("authorization") == f"Bearer {PROVIDER_KEY}", req.headers
    for name, value in req.headers:
        assert CLIENT_KEY not in value, f"client key forwarded upstream in header {name}"
    for h in ("x-api-key", "api-key", "x-goog-api-key"):
        assert req.header(h) is None, f"client credential header {h} forwarded upstream"


def test_router_chat_non_stream(fake, gw):
    client = gw.router_client()
    resp = client.chat.completions.create(model="openai:gpt-test", messages=MESSAGES, temperature=0.2)

    assert resp.object == "chat.completion"
    assert resp.model == "openai:gpt-test", "response model must be the provider-qualified ID the client asked for"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == "echo: ping 42"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.total_tokens == 14

    reqs = fake.requests_to("/v1/chat/completions", "POST")
    assert len(reqs) == 1, [r.target for r in fake.all_requests()]
    up = reqs[0]
    assert up.json["model"] == "gpt-test", "router must strip the `openai:` prefix upstream"
    assert up.json["messages"] == MESSAGES
    assert up.json.get("temperature") == 0.2
    assert not up.json.get("stream")
    assert_upstream_auth(up)


def test_router_chat_stream(fake, gw):
    client = gw.router_client()
    stream = client.chat.completions.create(
        model="openai:gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)

    assert chunks, "no chunks streamed"
    for c in chunks:
        assert c.object == "chat.completion.chunk"
        assert c.model == "openai:gpt-test", f"every stream chunk must carry the client's model ID, got {c.model!r}"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: ping 42"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    # include_usage: the last chunk has empty choices and the usage totals.
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 11
    assert chunks[-1].usage.total_tokens == 11 + 3

    up = fake.requests_to("/v1/chat/completions", "POST")[0]
    assert up.json["model"] == "gpt-test"
    assert up.json["stream"] is True
    assert (up.json.get("stream_options") or {}).get("include_usage") is True
    assert_upstream_auth(up)


def test_router_stream_is_not_buffered(fake, gw):
    """The upstream holds chunk 2 until the client has chunk 1; a buffering gateway times out."""
    gate = threading.Event()
    fake.stream_pieces = ["first", " second", " third"]
    fake.stream_gate = gate
    fake.gate_timeout = 4.0
    client = gw.router_client(timeout=10)

    t0 = time.monotonic()
    first_at = None
    pieces = []
    for chunk in client.chat.completions.create(model="openai:gpt-test", messages=MESSAGES, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            if first_at is None:
                first_at = time.monotonic() - t0
                gate.set()
    assert fake.gate_waited, "fake never reached the gate (stream not requested upstream?)"
    assert not fake.gate_timed_out, (
        "the gateway buffered the stream: chunk 1 did not reach the SDK while the upstream held chunk 2 "
        f"(first chunk seen after {first_at}s)")
    assert "".join(pieces) == "first second third"


def test_router_models_static(fake, gw):
    ids = sorted(m.id for m in gw.router_client().models.list())
    assert ids == ["openai:gpt-test", "openai:gpt-test-mini"]


def _poll_model_ids(client, expected, timeout=5.0):
    """Discovery runs in the background: poll until the list settles on `expected`."""
    deadline = time.monotonic() + timeout
    ids: list[str] = []
    while time.monotonic() < deadline:
        ids = sorted(m.id for m in client.models.list())
        if ids == expected:
            return ids
        time.sleep(0.1)
    return ids


def test_router_models_discovered(fake, start_gateway):
    fake.models = ["gpt-test", "gpt-test-mini", "text-embedding-3-small", "o-other"]
    gw = start_gateway(standard_config(fake.base_url, static=None))
    expected = ["openai:gpt-test", "openai:gpt-test-mini", "openai:o-other", "openai:text-embedding-3-small"]
    ids = _poll_model_ids(gw.router_client(), expected)
    assert ids == expected
    discovery = fake.requests_to("/v1/models", "GET")
    assert discovery, "no discovery request reached GET {baseUrl}/models"
    assert discovery[0].header("authorization") == f"Bearer {PROVIDER_KEY}"


def test_router_models_discovered_with_allow_filter(fake, start_gateway):
    fake.models = ["gpt-test", "gpt-test-mini", "text-embedding-3-small", "o-other"]
    gw = start_gateway(standard_config(fake.base_url, static=None, allow=["gpt-test*"]))
    expected = ["openai:gpt-test", "openai:gpt-test-mini"]
    assert _poll_model_ids(gw.router_client(), expected) == expected


def test_router_model_id_splits_at_first_colon(fake, start_gateway):
    gw = start_gateway(standard_config(fake.base_url, static=["ft:gpt-test:acme:7", "gpt-test"]))
    resp = gw.router_client().chat.completions.create(model="openai:ft:gpt-test:acme:7", messages=MESSAGES)
    assert resp.model == "openai:ft:gpt-test:acme:7"
    assert fake.requests_to("/v1/chat/completions")[0].json["model"] == "ft:gpt-test:acme:7"


def test_router_bare_proxy_name_and_prefix_override(fake, start_gateway):
    """`team-a` works as a proxy id while unique; a custom `prefix` becomes the model-ID prefix."""
    config = docs(
        secret_doc("openai-key", PROVIDER_KEY),
        provider_doc("openai", fake.base_url),
        proxy_doc("team-a", ["openai", ("openai", "acme")]),
    )
    gw = start_gateway(config)
    client = gw.router_client(proxy="team-a")
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["acme:gpt-test", "acme:gpt-test-mini", "openai:gpt-test", "openai:gpt-test-mini"]
    resp = client.chat.completions.create(model="acme:gpt-test-mini", messages=MESSAGES)
    assert resp.model == "acme:gpt-test-mini"
    up = fake.requests_to("/v1/chat/completions")[0]
    assert up.json["model"] == "gpt-test-mini"
    assert_upstream_auth(up)


def test_router_unqualified_model_goes_to_the_provider_that_lists_it(fake, gw):
    resp = gw.router_client().chat.completions.create(model="gpt-test-mini", messages=MESSAGES)
    assert resp.choices[0].message.content == "echo: ping 42"
    assert fake.requests_to("/v1/chat/completions")[0].json["model"] == "gpt-test-mini"


@pytest.mark.parametrize("client_header", ["x-api-key", "api-key", "x-goog-api-key"])
def test_router_strips_other_client_credentials(fake, gw, client_header):
    client = gw.router_client(default_headers={client_header: CLIENT_KEY})
    client.chat.completions.create(model="openai:gpt-test", messages=MESSAGES)
    assert_upstream_auth(fake.requests_to("/v1/chat/completions")[0])


def _two_provider_config(fake, default_model=None):
    """Providers `openai` and `alt` on the same fake, told apart by their keys; both list gpt-test."""
    return docs(
        secret_doc("openai-key", PROVIDER_KEY),
        secret_doc("alt-key", ALT_PROVIDER_KEY, b64=True),
        provider_doc("openai", fake.base_url),
        provider_doc("alt", fake.base_url, secret="alt-key", static=["gpt-test", "alt-only"]),
        proxy_doc("team-a", ["openai", ("alt", "alt")], default_model=default_model),
    )


def test_router_unqualified_id_listed_by_one_provider(fake, start_gateway):
    gw = start_gateway(_two_provider_config(fake))
    gw.router_client().chat.completions.create(model="alt-only", messages=MESSAGES)
    up = fake.requests_to("/v1/chat/completions")[0]
    assert up.json["model"] == "alt-only"
    assert up.header("authorization") == f"Bearer {ALT_PROVIDER_KEY}", "went to the wrong provider"


def test_router_ambiguous_unqualified_id_goes_to_default_models_provider(fake, start_gateway):
    gw = start_gateway(_two_provider_config(fake, default_model="alt:alt-only"))
    resp = gw.router_client().chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert resp.choices[0].message.content == "echo: ping 42"
    up = fake.requests_to("/v1/chat/completions")[0]
    assert up.json["model"] == "gpt-test"
    assert up.header("authorization") == f"Bearer {ALT_PROVIDER_KEY}", "defaultModel's provider must take it"


def test_router_ambiguous_unqualified_id_without_default_is_an_error_naming_prefixes(fake, start_gateway):
    gw = start_gateway(_two_provider_config(fake))
    with pytest.raises(openai.APIStatusError) as ei:
        gw.router_client().chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert 400 <= ei.value.status_code < 500
    msg = ei.value.response.json()["error"]["message"]
    assert "openai" in msg and "alt" in msg, msg
    assert fake.requests_to("/v1/chat/completions") == []


def test_router_namespace_defaults_to_default(fake, start_gateway):
    config = "---\n".join(
        doc.replace(", namespace: ai", "")
        for doc in (secret_doc("openai-key", PROVIDER_KEY), provider_doc("openai", fake.base_url),
                    proxy_doc("team-a", ["openai"]))
    )
    assert "namespace" not in config
    gw = start_gateway(config)
    resp = gw.router_client(proxy="default.team-a").chat.completions.create(model="openai:gpt-test",
                                                                            messages=MESSAGES)
    assert resp.model == "openai:gpt-test"
    assert_upstream_auth(fake.requests_to("/v1/chat/completions")[0])
