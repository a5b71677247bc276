"""Native pass-through (`/v1/openai/{proxy}/...`) driven by the official `openai` SDK."""

from __future__ import annotations

import threading

import openai
import pytest

from harness import CLIENT_KEY, PROVIDER_KEY, docs, provider_doc, proxy_doc, secret_doc

MESSAGES = [{"role": "user", "content": "native hello"}]


def assert_upstream_auth(req) -> None:
    assert req.header("authorization") == f"Bearer {PROVIDER_KEY}", req.headers
    for name, value in req.headers:
        assert CLIENT_KEY not in value, f"client key forwarded upstream in header {name}"


def test_native_chat_non_stream(fake, gw):
    client = gw.native_client()
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES, max_tokens=5)
    resp = raw.parse()
    assert resp.model == "gpt-test", "native route returns the provider's own body unchanged"
    assert resp.choices[0].message.content == "echo: native hello"
    assert resp.usage.total_tokens == 14
    assert raw.headers.get("openai-processing-ms") == "5", "upstream response headers pass through"

    reqs = fake.requests_to("/v1/chat/completions", "POST")
    assert len(reqs) == 1, [r.target for r in fake.all_requests()]
    assert reqs[0].json == {"model": "gpt-test", "messages": MESSAGES, "max_tokens": 5}
    assert_upstream_auth(reqs[0])


def test_native_chat_stream(fake, gw):
    client = gw.native_client()
    chunks = list(client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    assert all(c.model == "gpt-test" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: native hello"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 14
    up = fake.requests_to("/v1/chat/completions", "POST")[0]
    assert up.json["stream"] is True
    assert_upstream_auth(up)
    assert fake.stream_completed == 1


def test_native_stream_is_not_buffered(fake, gw):
    gate = threading.Event()
    fake.stream_pieces = ["one", " two", " three"]
    fake.stream_gate = gate
    fake.gate_timeout = 4.0
    pieces = []
    for chunk in gw.native_client(timeout=10).chat.completions.create(model="gpt-test", messages=MESSAGES,
                                                                     stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            gate.set()
    assert fake.gate_waited
    assert not fake.gate_timed_out, "the native route buffered the SSE stream"
    assert "".join(pieces) == "one two three"


EMBEDDING_MODELS = ("gpt-test", "gpt-test-mini", "text-embedding-3-small")


@pytest.fixture
def gw_embed(fake, start_gateway):
    """The standard gateway, with the embedding model among the provider's static models:
    native routes check the model an endpoint names against `models.static`."""
    return start_gateway(docs(
        secret_doc("openai-key", PROVIDER_KEY),
        provider_doc("openai", fake.base_url, static=EMBEDDING_MODELS),
        proxy_doc("team-a", ["openai"]),
    ))


def test_native_embeddings(fake, gw_embed):
    client = gw_embed.native_client()
    resp = client.embeddings.create(model="text-embedding-3-small", input=["abc", "hello"])
    assert [d.index for d in resp.data] == [0, 1]
    assert resp.data[0].embedding == [3.0, 0.5, -0.25, 0.0]
    assert resp.data[1].embedding == [5.0, 0.5, -0.25, 1.0]
    up = fake.requests_to("/v1/embeddings", "POST")
    assert len(up) == 1 and up[0].json["input"] == ["abc", "hello"]
    assert up[0].json["model"] == "text-embedding-3-small"
    assert_upstream_auth(up[0])


def test_native_embeddings_float_format(fake, gw_embed):
    resp = gw_embed.native_client().embeddings.create(model="text-embedding-3-small", input="xy",
                                                encoding_format="float")
    assert resp.data[0].embedding == [2.0, 0.5, -0.25, 0.0]


def test_native_models_outside_the_providers_list_are_404(fake, gw):
    """`models.static` holds on every native endpoint that names a model, as on the router."""
    client = gw.native_client()
    for call in (
        lambda: client.embeddings.create(model="text-embedding-3-small", input="x"),
        lambda: client.chat.completions.create(model="o3-pro", messages=MESSAGES),
    ):
        with pytest.raises(openai.NotFoundError) as info:
            call()
        assert info.value.body["code"] == "model_not_found", info.value.body
    assert not fake.requests_to("/v1/embeddings", "POST")
    assert not fake.requests_to("/v1/chat/completions", "POST")


def test_native_models_list_and_query_passthrough(fake, gw):
    fake.models = ["gpt-test", "native-only-model"]
    fake.reset()
    client = gw.native_client(default_headers={"traceparent": "00-abc123-def456-01", "x-custom-trace": "abc123"})
    page = client.models.list(extra_query={"limit": "5"})
    assert [m.id for m in page.data] == ["gpt-test", "native-only-model"], "native models are the provider's own IDs"
    ups = [r for r in fake.requests_to("/v1/models", "GET") if r.query.get("limit")]
    assert ups, f"query string not forwarded: {[r.target for r in fake.all_requests()]}"
    assert ups[0].query["limit"] == ["5"]
    # Headers cross by allow-list (issue 11): trace context does, an unknown header does not.
    assert ups[0].header("traceparent") == "00-abc123-def456-01", "allowed client headers are forwarded"
    assert ups[0].header("x-custom-trace") is None, "a header outside the allow-list was forwarded"
    assert_upstream_auth(ups[0])


def test_native_bare_proxy_name(fake, gw):
    resp = gw.native_client(proxy="team-a").chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert resp.choices[0].message.content == "echo: native hello"


def test_native_strips_every_client_credential(fake, gw):
    headers = {"x-api-key": CLIENT_KEY, "api-key": CLIENT_KEY, "x-goog-api-key": CLIENT_KEY}
    r = gw.raw("POST", "/v1/openai/ai.team-a/chat/completions",
               {"model": "gpt-test", "messages": MESSAGES}, headers=headers)
    assert r.status == 200, r.text
    up = fake.requests_to("/v1/chat/completions", "POST")[0]
    assert_upstream_auth(up)
    for h in headers:
        assert up.header(h) is None, f"{h} forwarded upstream"
