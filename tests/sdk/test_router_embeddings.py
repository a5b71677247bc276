"""Embeddings on the Model Router (`POST …/embeddings`) with the official `openai` SDK:
OpenAI (forwarded), Gemini (`batchEmbedContents`, 100 a batch), Bedrock (Titan Text Embeddings
v2 through InvokeModel, SigV4 checked by botocore's signer) and Cohere (v2 `embed`, 96 a
batch); float and base64; usage; errors."""

from __future__ import annotations

import base64
import json
import struct

import openai
import pytest

from router_api_fixtures import (EMBED_MODELS, audit_for, aws_env, control, fakes5, gw5, irsa,  # noqa: F401
                                 openai_fake, runtime, store, sts)
from translated_fixtures import anthropic_fake, cohere_fake, gemini_fake  # noqa: F401
from test_bedrock import assert_gateway_signed


EMBEDDERS = tuple(EMBED_MODELS)

# The Bedrock fake listens on 127.0.0.1: trusted like an operator's private endpoint.
pytestmark = pytest.mark.usefixtures("trust_loopback_identity")


def model_of(provider: str) -> str:
    return f"{provider}:{EMBED_MODELS[provider]}"


def embed_requests(fakes, provider: str) -> list:
    if provider == "bedrock":
        return [r for r in fakes["bedrock"][0].requests if r.path.endswith("/invoke")]
    path = {"openai": "/v1/embeddings", "cohere": "/v2/embed"}.get(provider)
    return [r for r in fakes[provider].all_requests()
            if (r.path == path if path else r.path.endswith(":batchEmbedContents"))]


def expected_vector(provider: str, text: str, i: int, dims: int) -> list[float]:
    """What each fake answers for input `i`: its length, then fixed values."""
    if provider == "bedrock":  # Titan embeds one text a call: its index is always 0
        return ([float(len(text)), 0.5, -0.25, 0.0] + [0.125] * dims)[:dims]
    return ([float(len(text)), 0.5, -0.25, float(i)] + [0.125] * dims)[:dims]


@pytest.mark.parametrize("encoding", ["float", "base64"])
@pytest.mark.parametrize("provider", EMBEDDERS)
def test_embeddings_float_and_base64_with_usage(provider, encoding, fakes5, gw5):
    client = gw5.router_client()
    texts = ["the quick brown fox", "jumps over", "the lazy dog"]
    dims = 256 if provider == "bedrock" else 4
    kw = {"dimensions": dims} if provider == "bedrock" else {}
    rid = f"rid-emb-{provider}-{encoding}"
    res = client.embeddings.create(model=model_of(provider), input=texts, encoding_format=encoding,
                                   extra_headers={"x-request-id": rid}, **kw)
    assert res.object == "list" and res.model == model_of(provider)
    assert [d.index for d in res.data] == [0, 1, 2]
    for i, (d, text) in enumerate(zip(res.data, texts)):
        vector = d.embedding
        if encoding == "base64":  # asked for explicitly, the SDK hands the string over as it came
            assert isinstance(vector, str)
            data = base64.b64decode(vector)
            vector = list(struct.unpack(f"<{len(data) // 4}f", data))
        assert vector == pytest.approx(expected_vector(provider, text, i, dims)), (i, vector[:5])
    assert res.usage.prompt_tokens > 0 and res.usage.total_tokens == res.usage.prompt_tokens
    if provider in ("bedrock", "cohere"):
        assert res.usage.prompt_tokens == sum(len(t.split()) for t in texts)  # the provider's count
    elif provider == "openai":
        assert res.usage.prompt_tokens == 4
    line = audit_for(gw5, rid)
    assert line["endpoint"] == "embeddings" and line["usage"]["input_tokens"] == res.usage.prompt_tokens
    reqs = embed_requests(fakes5, provider)
    if provider == "bedrock":
        # One call a text (Titan takes one), sent concurrently.
        assert len(reqs) == 3 and sorted(json.loads(r.body)["inputText"] for r in reqs) == sorted(texts)
        assert all(json.loads(r.body)["dimensions"] == 256 for r in reqs)
        assert_gateway_signed(fakes5["bedrock"][0])
    else:
        assert len(reqs) == 1
    if provider == "openai":
        assert reqs[0].json["model"] == EMBED_MODELS["openai"]
        assert reqs[0].json.get("encoding_format") == encoding


@pytest.mark.parametrize("provider", EMBEDDERS)
def test_base64_on_the_wire_is_little_endian_f32(provider, fakes5, gw5):
    raw = gw5.raw("POST", "/v1/model-router/ai.team-a/embeddings",
                  {"model": model_of(provider), "input": "hello", "encoding_format": "base64"},
                  headers={"content-type": "application/json"})
    assert raw.status == 200, raw.text
    emb = raw.json()["data"][0]["embedding"]
    assert isinstance(emb, str)
    data = base64.b64decode(emb)
    values = struct.unpack(f"<{len(data) // 4}f", data)
    assert values[:3] == (5.0, 0.5, -0.25)


@pytest.mark.parametrize("provider,limit", [("gemini", 100), ("cohere", 96)])
def test_batches_are_split_at_the_provider_limit(provider, limit, fakes5, gw5):
    client = gw5.router_client()
    texts = [f"text number {i}" for i in range(250)]
    res = client.embeddings.create(model=model_of(provider), input=texts)
    assert len(res.data) == 250
    assert [d.index for d in res.data] == list(range(250))
    # Order kept across batches: each vector starts with its own text's length.
    assert [d.embedding[0] for d in res.data] == [float(len(t)) for t in texts]
    reqs = embed_requests(fakes5, provider)
    key = "requests" if provider == "gemini" else "texts"
    # Batches go out concurrently: their sizes, in any order.
    assert sorted(len(r.json[key]) for r in reqs) == sorted([limit, limit, 250 - 2 * limit])


def test_the_sdk_default_encoding_is_base64_and_decodes(fakes5, gw5):
    """Without `encoding_format` the openai SDK asks for base64 and decodes it itself."""
    res = gw5.router_client().embeddings.create(model=model_of("cohere"), input="hello")
    assert res.data[0].embedding == pytest.approx([5.0, 0.5, -0.25, 0.0])
    assert embed_requests(fakes5, "cohere")[0].json["embedding_types"] == ["float"]


def test_errors(fakes5, gw5):
    client = gw5.router_client()
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="anthropic:claude-sonnet-4-6", input="x")
    assert "embeddings" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=model_of("gemini"), input=[])
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="bedrock:anthropic.claude-v2", input="x")
    assert "Titan" in str(e.value)
    # The provider's own refusal, in OpenAI's shape.
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=model_of("bedrock"), input="x", dimensions=7)
    assert "dimensions" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nosuch:model", input="x")
