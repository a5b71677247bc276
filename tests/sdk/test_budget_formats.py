"""LlmBudget settlement on every wire format, driven by the official SDKs: the tokens (and
dollars) a request is charged are the usage the provider reported — in a JSON answer, an SSE
stream, a Bedrock event stream, a Gemini JSON array, an answer larger than any buffer — once
per request whatever failover did, and an estimate from the bytes seen when a stream breaks off.
"""

from __future__ import annotations

import http.client
import json

import anthropic
import cohere
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from budget_support import budget_doc, client_keys, metric, wait_for
from fakes.base import Reply
from fakes.failing_openai import FailingOpenAI, Fault
from harness import CLIENT_KEY, PROVIDER_KEY, docs, provider_doc, secret_doc
from test_bedrock import aws_env, control, store  # noqa: F401
from test_failover import one, two  # noqa: F401
from translated_fixtures import MODELS, anthropic_fake, cohere_fake, gemini_fake  # noqa: F401

KEYS = {"apiKeys": {"secretRef": {"name": "client-keys"}}}
TOKENS = [{"name": "tokens", "per": "proxy", "tokens": 10_000_000, "window": "1h"}]
HI = [{"role": "user", "content": "hi"}]


def proxy(providers: list[dict], **spec) -> str:
    return json.dumps({"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmProxy",
                       "metadata": {"name": "team-a", "namespace": "ai"},
                       "spec": {"providers": providers, "clientAuth": KEYS, **spec}}) + "\n"


def refs(*names: str) -> list[dict]:
    return [{"providerRef": {"name": n}} for n in names]


def priced(doc: str, prices: list[dict]) -> str:
    return doc + "  pricing: " + json.dumps(prices) + "\n"


def consumed(gw, limit: str = "tokens") -> float:
    return metric(gw, "portcullis_budget_consumed_total", budget="ai/limits", limit=limit)


def assert_consumed(gw, expected: float, limit: str = "tokens") -> None:
    """The settled total reaches `expected` (settlement follows the body's end by a moment)."""
    try:
        wait_for(lambda: consumed(gw, limit) == expected, 3, f"{limit} consumed == {expected}")
    except AssertionError:
        assert consumed(gw, limit) == expected


def assert_consumed_between(gw, low: float, high: float, limit: str = "tokens") -> float:
    """Settled at `low` or more, and no more than `high` (what a cut stream counted may run
    ahead of what reached the client before the connection was dropped)."""
    try:
        wait_for(lambda: consumed(gw, limit) >= low, 3, f"{limit} consumed >= {low}")
    except AssertionError:
        assert consumed(gw, limit) >= low
    value = consumed(gw, limit)
    assert low <= value <= high, (low, value, high)
    return value


# ----------------------------------------------------------------- settlement per format
def test_azure_openai_deployments_settle_with_reported_usage(one, start_gateway):
    azure = ("apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {name: azure, namespace: ai}\n"
             f"spec:\n  type: azure\n  baseUrl: http://127.0.0.1:{one.port}\n  azure: {{apiVersion: '2024-10-21'}}\n"
             "  auth: {apiKey: {secretRef: {name: openai-key}}}\n  models: {static: [gpt-test]}\n")
    gw = start_gateway(docs(secret_doc("openai-key", PROVIDER_KEY), client_keys(), azure, proxy(refs("azure")),
                            budget_doc(TOKENS)))
    client = openai.AzureOpenAI(azure_endpoint=f"{gw.url}/v1/azure/ai.team-a", api_key=CLIENT_KEY,
                                api_version="2024-10-21", max_retries=0, timeout=15)
    one.queue(Reply(text="answer", input_tokens=23, output_tokens=7))
    r = client.chat.completions.create(model="gpt-test", messages=HI, max_tokens=100)
    assert r.usage.total_tokens == 30
    assert_consumed(gw, 30)
    # Streamed: the gateway asks the deployment for usage and keeps that chunk from the client.
    one.queue(Reply(text="streamed answer", input_tokens=41, output_tokens=13))
    chunks = list(client.chat.completions.create(model="gpt-test", messages=HI, max_tokens=100, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed answer"
    assert all(c.usage is None for c in chunks)
    assert one.chats()[-1].json["stream_options"] == {"include_usage": True}
    assert_consumed(gw, 30 + 54)


def gemini_cohere_config(gemini_fake, cohere_fake) -> str:  # noqa: F811
    return docs(secret_doc("provider-key", PROVIDER_KEY), client_keys(),
                provider_doc("gemini", gemini_fake.base_url, secret="provider-key", type_="gemini",
                             static=[MODELS["gemini"]]),
                provider_doc("cohere", cohere_fake.base_url, secret="provider-key", type_="cohere",
                             static=[MODELS["cohere"], "embed-v4.0"]),
                proxy(refs("gemini", "cohere")), budget_doc(TOKENS))


def test_gemini_generate_content_json_sse_and_json_array_settle_with_usage_metadata(gemini_fake, cohere_fake,  # noqa: F811
                                                                                     start_gateway):
    gw = start_gateway(gemini_cohere_config(gemini_fake, cohere_fake))
    client = genai.Client(api_key=CLIENT_KEY, http_options=genai_types.HttpOptions(
        base_url=gw.native_base(prefix="gemini"), timeout=15_000))
    # promptTokenCount (9) includes the 2 cached tokens: 9 + 4.
    gemini_fake.queue(Reply(text="json", input_tokens=9, output_tokens=4, cached_tokens=2))
    assert client.models.generate_content(model=MODELS["gemini"], contents="x").text == "json"
    assert_consumed(gw, 13)
    # alt=sse: usageMetadata on every chunk, complete on the last.
    gemini_fake.queue(Reply(text="streamed over sse", input_tokens=30, output_tokens=12))
    text = "".join(c.text or "" for c in client.models.generate_content_stream(model=MODELS["gemini"], contents="x"))
    assert text == "streamed over sse"
    assert [r.query.get("alt") for r in gemini_fake.all_requests() if "streamGenerateContent" in r.path] == [["sse"]]
    assert_consumed(gw, 13 + 42)
    # Without alt=sse the stream is one JSON array of GenerateContentResponse objects: the
    # usage is the last element's usageMetadata (not an estimate from the array's bytes).
    gemini_fake.queue(Reply(text="streamed as a json array", input_tokens=400, output_tokens=120))
    r = gw.raw("POST", f"/v1/gemini/ai.team-a/v1beta/models/{MODELS['gemini']}:streamGenerateContent",
               {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}, {"x-goog-api-key": CLIENT_KEY})
    assert r.status == 200, r.text
    array = r.json()
    assert isinstance(array, list) and len(array) == 3
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in array) == "streamed as a json array"
    assert_consumed(gw, 13 + 42 + 520)


def test_cohere_v2_chat_stream_and_embed_settle_with_reported_usage(gemini_fake, cohere_fake,  # noqa: F811
                                                                   start_gateway):
    gw = start_gateway(gemini_cohere_config(gemini_fake, cohere_fake))
    client = cohere.ClientV2(api_key=CLIENT_KEY, base_url=gw.native_base(prefix="cohere"), timeout=15)
    # usage.tokens is what the model processed (billed_units leaves out the prompt template).
    cohere_fake.queue(Reply(text="Hello from Command.", input_tokens=140, output_tokens=15))
    r = client.chat(model=MODELS["cohere"], messages=[{"role": "user", "content": "hi"}], max_tokens=100)
    assert r.usage.tokens.input_tokens == 140 and r.usage.billed_units.input_tokens == 135
    assert_consumed(gw, 155)
    cohere_fake.queue(Reply(text="Streaming from Command now.", input_tokens=80, output_tokens=16))
    events = list(client.chat_stream(model=MODELS["cohere"], messages=[{"role": "user", "content": "hi"}],
                                     max_tokens=100))
    assert events[-1].type == "message-end" and events[-1].delta.usage.tokens.output_tokens == 16
    assert_consumed(gw, 155 + 96)
    # Embed reports what it bills in meta.billed_units (here one token per word).
    e = client.embed(model="embed-v4.0", texts=["one two three", "four five"], input_type="search_document",
                     embedding_types=["float"])
    assert e.meta.billed_units.input_tokens == 5
    assert_consumed(gw, 155 + 96 + 5)


def test_bedrock_converse_stream_and_invoke_model_settle_with_usage(aws_env, store, control,  # noqa: F811
                                                               start_gateway):
    from fakes.aws import FakeBedrock
    from test_bedrock import CLAUDE, REGION, bedrock_provider, runtime_client
    fake_bedrock = FakeBedrock(store, REGION, bearer=PROVIDER_KEY).start()
    try:
        gw = start_gateway(docs(
            secret_doc("bedrock-key", PROVIDER_KEY),
            bedrock_provider("bedrock-us", fake_bedrock.url, control.url,
                             auth="{apiKey: {secretRef: {name: bedrock-key}}}"),
            json.dumps({"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmProxy",
                        "metadata": {"name": "team-a", "namespace": "ai"},
                        "spec": {"providers": refs("bedrock-us")}}) + "\n",
            budget_doc(TOKENS)))
        client = runtime_client(gw)
        messages = [{"role": "user", "content": [{"text": "k"}]}]
        out = client.converse(modelId=CLAUDE, messages=messages, inferenceConfig={"maxTokens": 100})
        # inputTokens 21 + cacheWriteInputTokens 4 + cacheReadInputTokens 8 + outputTokens 9 = totalTokens.
        assert out["usage"]["totalTokens"] == 42
        assert_consumed(gw, 42)
        stream = client.converse_stream(modelId=CLAUDE, messages=messages, inferenceConfig={"maxTokens": 100})
        events = list(stream["stream"])
        assert events[-1]["metadata"]["usage"]["totalTokens"] == 42
        assert_consumed(gw, 84)
        # InvokeModel counts tokens in headers; a Titan embedding reports nothing else.
        out = client.invoke_model(modelId="amazon.titan-embed-text-v2:0",
                                  body=json.dumps({"inputText": "four words to embed", "dimensions": 1024}))
        assert out["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-input-token-count"] == "4"
        assert len(json.loads(out["body"].read())["embedding"]) == 1024
        assert_consumed(gw, 88)
        # Claude through InvokeModel, plain and streamed (Anthropic events, base64 in `chunk`s):
        # 21 input + 9 output each time, not an estimate from the frames.
        claude_body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100,
                                  "messages": [{"role": "user", "content": "k"}]})
        out = client.invoke_model(modelId=CLAUDE, body=claude_body)
        assert json.loads(out["body"].read())["usage"]["output_tokens"] == 9
        assert_consumed(gw, 88 + 30)
        out = client.invoke_model_with_response_stream(modelId=CLAUDE, body=claude_body)
        chunks = [json.loads(e["chunk"]["bytes"]) for e in out["body"]]
        assert chunks[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 9
        assert "".join(c["delta"].get("text", "") for c in chunks if c["type"] == "content_block_delta")
        assert_consumed(gw, 88 + 60)
    finally:
        fake_bedrock.stop()


# ----------------------------------------------------------------- an answer past every buffer
def test_an_embeddings_answer_larger_than_the_tap_buffer_is_charged_its_reported_usage(fake, start_gateway):
    gw = start_gateway(docs(secret_doc("openai-key", PROVIDER_KEY), client_keys(),
                            provider_doc("openai", fake.base_url, static=["text-embedding-3-small"]),
                            proxy(refs("openai")), budget_doc(TOKENS)))
    client = openai.OpenAI(base_url=gw.native_base(), api_key=CLIENT_KEY, max_retries=0, timeout=30)
    texts = [f"text number {i}" for i in range(640)]
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=texts,
                                                     dimensions=3072)
    size = len(raw.http_response.content)
    assert size > 9 * 1024 * 1024, size  # more than the 8 MiB the tap ever copies aside
    res = raw.parse()
    assert len(res.data) == 640 and len(res.data[0].embedding) == 3072
    # The fake reports 4 prompt tokens; bytes / 4 would be millions.
    assert res.usage.prompt_tokens == 4
    assert_consumed(gw, 4)
    # The same through the Model Router.
    router = openai.OpenAI(base_url=gw.router_base(), api_key=CLIENT_KEY, max_retries=0, timeout=30)
    res = router.embeddings.create(model="openai:text-embedding-3-small", input=texts, dimensions=3072)
    assert len(res.data) == 640 and res.usage.prompt_tokens == 4
    assert_consumed(gw, 8)


# ----------------------------------------------------------------- failover counts once
def test_failover_counts_one_request_and_only_the_served_usage(one, two, start_gateway):
    smart = [{"name": "smart", "targets": [{"model": "one:gpt-test", "weight": 1},
                                           {"model": "two:gpt-test", "weight": 0}]}]
    gw = start_gateway(docs(
        secret_doc("openai-key", PROVIDER_KEY), client_keys(),
        provider_doc("one", one.base_url), provider_doc("two", two.base_url),
        proxy([{"providerRef": {"name": "one"}, "prefix": "one"}, {"providerRef": {"name": "two"}, "prefix": "two"}],
              models=smart),
        budget_doc([{"name": "requests", "per": "proxy", "requests": 100, "window": "1h"}, *TOKENS])))
    client = openai.OpenAI(base_url=gw.router_base(), api_key=CLIENT_KEY, max_retries=0, timeout=15)
    one.fail(Fault.status(500))
    two.queue(Reply(text="served", input_tokens=40, output_tokens=6))
    raw = client.chat.completions.with_raw_response.create(model="smart", messages=HI, max_tokens=50)
    assert raw.headers["x-portcullis-served-by"] == "two:gpt-test"
    assert raw.parse().choices[0].message.content == "served"
    assert len(one.chats()) == 1 and len(two.chats()) == 1
    assert_consumed(gw, 1, "requests")
    assert_consumed(gw, 46)
    # Streamed: the first target fails before its stream starts; the second's usage (asked for
    # by the gateway, hidden from the client) is the only one charged.
    one.fail(Fault.status(500))
    two.queue(Reply(text="served stream", input_tokens=31, output_tokens=9))
    chunks = list(client.chat.completions.create(model="smart", messages=HI, max_tokens=50, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "served stream"
    assert len(one.chats()) == 2 and len(two.chats()) == 2
    assert_consumed(gw, 2, "requests")
    assert_consumed(gw, 46 + 40)


def test_a_native_pool_that_fails_over_counts_once(one, two, start_gateway):
    def azure(name: str, fake: FailingOpenAI) -> str:
        return ("apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\n"
                f"metadata: {{name: {name}, namespace: ai}}\nspec:\n  type: azure\n"
                f"  baseUrl: http://127.0.0.1:{fake.port}\n  azure: {{apiVersion: '2024-10-21'}}\n"
                "  auth: {apiKey: {secretRef: {name: openai-key}}}\n  models: {static: [gpt-test]}\n")
    pool = [{"providerRef": {"name": "az-east"}, "prefix": "azure"},
            {"providerRef": {"name": "az-west"}, "prefix": "azure"}]
    gw = start_gateway(docs(
        secret_doc("openai-key", PROVIDER_KEY), client_keys(), azure("az-east", one), azure("az-west", two),
        proxy(pool), budget_doc([{"name": "requests", "per": "proxy", "requests": 100, "window": "1h"}, *TOKENS])))
    client = openai.AzureOpenAI(azure_endpoint=f"{gw.url}/v1/azure/ai.team-a", api_key=CLIENT_KEY,
                                api_version="2024-10-21", max_retries=0, timeout=15)
    one.fail(*[Fault.status(500)] * 50)
    n = 0
    while not one.chats() and n < 20:
        raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=HI, max_tokens=50)
        assert raw.headers["x-portcullis-served-by"] == "azure@az-west"
        n += 1
    assert one.chats(), "the failing member was tried"
    # Each request served by az-west (11 + 3 tokens), counted once however many members it tried.
    assert_consumed(gw, n, "requests")
    assert_consumed(gw, 14 * n)


# ----------------------------------------------------------------- a stream that breaks off
def read_cut_stream(gw, target: str, body: bytes, headers: dict) -> bytes:
    """POST, then every byte that arrives until the connection ends (cut or not)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("POST", target, body, {"Content-Type": "application/json", **headers})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    received = b""
    try:
        while chunk := resp.read1(65536):
            received += chunk
    except (http.client.IncompleteRead, ConnectionError) as e:
        received += getattr(e, "partial", b"")
    conn.close()
    return received


def test_a_stream_cut_upstream_is_charged_an_estimate_and_releases_its_reservation(one, start_gateway):
    gw = start_gateway(docs(secret_doc("openai-key", PROVIDER_KEY), client_keys(),
                            provider_doc("one", one.base_url),
                            proxy([{"providerRef": {"name": "one"}, "prefix": "one"}]),
                            budget_doc([{"name": "tokens", "per": "proxy", "tokens": 1000, "window": "1h"}])))
    one.fail(Fault.break_after_first())
    # The client asks for usage itself, so the gateway sends this body unchanged.
    body = json.dumps({"model": "one:gpt-test", "stream": True, "max_tokens": 600,
                       "stream_options": {"include_usage": True}, "messages": HI}).encode()
    received = read_cut_stream(gw, "/v1/model-router/ai.team-a/chat/completions", body,
                               {"Authorization": f"Bearer {CLIENT_KEY}"})
    assert b'"content": "partial"' in received, received
    assert b'"usage"' not in received, "no usage was reported"
    # The input estimate (body bytes / 4) and one token per 4 bytes sent: at least what reached
    # the client, and far from the 600-token allowance.
    low = -(-len(body) // 4) + -(-len(received) // 4)
    first = assert_consumed_between(gw, low, low + 100)
    # The 600-token allowance was released: the same request fits again (1000 - estimate >
    # reservation), which it would not if the first reservation were still held.
    r = gw.raw("POST", "/v1/model-router/ai.team-a/chat/completions", body)
    assert r.status == 200, r.text
    assert '"usage"' in r.text
    assert_consumed(gw, first + 14)


def test_a_stream_cut_after_a_running_count_is_charged_at_least_the_bytes_sent(anthropic_fake, gemini_fake,  # noqa: F811
                                                                                start_gateway):
    # Anthropic's message_start says output_tokens 1 until message_delta; Gemini's chunks carry
    # the prompt count until the last. A stream that stops before the final count is charged
    # the input reported and one output token per 4 bytes sent, not the running count.
    gw = start_gateway(docs(
        secret_doc("provider-key", PROVIDER_KEY), client_keys(),
        provider_doc("anthropic", anthropic_fake.base_url, secret="provider-key", type_="anthropic",
                     static=[MODELS["anthropic"]]),
        provider_doc("gemini", gemini_fake.base_url, secret="provider-key", type_="gemini",
                     static=[MODELS["gemini"]]),
        proxy(refs("anthropic", "gemini")), budget_doc(TOKENS)))
    anthropic_fake.queue(Reply(text="An answer that breaks off early", input_tokens=50, output_tokens=500,
                               stream_cut=True))
    received = read_cut_stream(
        gw, "/v1/anthropic/ai.team-a/v1/messages",
        json.dumps({"model": MODELS["anthropic"], "max_tokens": 1000, "stream": True,
                    "messages": [{"role": "user", "content": "x"}]}).encode(),
        {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"})
    assert b"message_start" in received and b"message_delta" not in received, received
    # The running count would be 50 + 1; the whole answer 50 + 500.
    low = 50 + -(-len(received) // 4)
    anthropic_total = assert_consumed_between(gw, low, 50 + 250)

    gemini_fake.queue(Reply(text="Another answer that breaks off", input_tokens=60, output_tokens=500,
                            stream_cut=True))
    received = read_cut_stream(
        gw, f"/v1/gemini/ai.team-a/v1beta/models/{MODELS['gemini']}:streamGenerateContent?alt=sse",
        json.dumps({"contents": [{"role": "user", "parts": [{"text": "x"}]}]}).encode(),
        {"x-goog-api-key": CLIENT_KEY})
    assert b"usageMetadata" in received and b"finishReason" not in received, received
    low = anthropic_total + 60 + -(-len(received) // 4)
    assert_consumed_between(gw, low, anthropic_total + 60 + 250)


# ----------------------------------------------------------------- dollars with cached input
def test_usd_prices_cached_input_reported_by_anthropic_and_openai(anthropic_fake, fake, start_gateway):  # noqa: F811
    usd = [{"name": "spend", "per": "proxy", "usd": "100", "window": "month"}]
    gw = start_gateway(docs(
        secret_doc("provider-key", PROVIDER_KEY), secret_doc("openai-key", PROVIDER_KEY), client_keys(),
        priced(provider_doc("anthropic", anthropic_fake.base_url, secret="provider-key", type_="anthropic",
                            static=[MODELS["anthropic"]]),
               [{"models": ["claude-*"], "input": "3", "cachedInput": "0.3", "output": "15"}]),
        priced(provider_doc("openai", fake.base_url),
               [{"models": ["gpt-test*"], "input": "2", "cachedInput": "0.5", "output": "8"}]),
        proxy(refs("anthropic", "openai")), budget_doc(usd)))
    # Anthropic: input_tokens leaves out cache reads (cache_read_input_tokens, at the cached
    # price). 1001 × $3 + 5001 × $0.30 + 200 × $15 per million = 7503.3 → 7504 micro-USD.
    anthropic_fake.queue(Reply(text="cached", input_tokens=1001, output_tokens=200, cached_tokens=5001))
    claude = anthropic.Anthropic(api_key=CLIENT_KEY, base_url=gw.native_base(prefix="anthropic"), max_retries=0,
                                 timeout=15)
    m = claude.messages.create(model=MODELS["anthropic"], max_tokens=300, messages=[{"role": "user", "content": "x"}])
    assert m.usage.cache_read_input_tokens == 5001
    assert_consumed(gw, 7504, "spend")
    # OpenAI: prompt_tokens includes prompt_tokens_details.cached_tokens. 2000 prompt tokens of
    # which 1500 cached, 100 completion: 500 × $2 + 1500 × $0.50 + 100 × $8 = 2550 micro-USD,
    # on the native route and (streamed, usage asked for by the gateway) through the router.
    native = openai.OpenAI(base_url=gw.native_base(), api_key=CLIENT_KEY, max_retries=0, timeout=15)
    fake.queue(Reply(text="cached too", input_tokens=2000, output_tokens=100, cached_tokens=1500))
    r = native.chat.completions.create(model="gpt-test", messages=HI, max_tokens=300)
    assert r.usage.prompt_tokens_details.cached_tokens == 1500
    assert_consumed(gw, 7504 + 2550, "spend")
    fake.queue(Reply(text="cached stream", input_tokens=2001, output_tokens=100, cached_tokens=1500))
    router = openai.OpenAI(base_url=gw.router_base(), api_key=CLIENT_KEY, max_retries=0, timeout=15)
    chunks = list(router.chat.completions.create(model="openai:gpt-test", messages=HI, max_tokens=300, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "cached stream"
    # One more uncached prompt token: + $2 per million = 2 micro-USD.
    assert_consumed(gw, 7504 + 2550 + 2552, "spend")
