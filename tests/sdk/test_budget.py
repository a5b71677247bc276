"""LlmBudget with the in-process store: limits reserved before a request goes upstream,
reconciled with the usage the provider reports, refused in each route's own error shape."""

from __future__ import annotations

import json
import subprocess
import time

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from budget_support import ALICE_KEY, BOB_KEY, audit_lines, budget_doc, client_keys, metric
from harness import CLIENT_KEY, PROVIDER_KEY, docs, portcullis_bin, provider_doc, secret_doc
from test_bedrock import aws_env, control, store  # noqa: F401
from translated_fixtures import MODELS, anthropic_fake, gemini_fake  # noqa: F401

KEYS = {"apiKeys": {"secretRef": {"name": "client-keys"}}}


def proxy(name: str = "team-a", providers=("openai",), **spec) -> str:
    return json.dumps({"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmProxy",
                       "metadata": {"name": name, "namespace": "ai"},
                       "spec": {"providers": [{"providerRef": {"name": p}} for p in providers],
                                "clientAuth": KEYS, **spec}}) + "\n"


def openai_config(fake, *budgets: str, pricing: list | None = None) -> str:
    provider = provider_doc("openai", fake.base_url)
    if pricing is not None:
        provider += "  pricing: " + json.dumps(pricing) + "\n"
    return docs(secret_doc("openai-key", PROVIDER_KEY), client_keys(), provider, proxy(),
                proxy("team-b"), *budgets)


def client(gw, key: str = CLIENT_KEY, proxy_id: str = "ai.team-a") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.router_base(proxy_id), api_key=key, max_retries=0, timeout=15)


def ask(c: openai.OpenAI, **kw):
    return c.chat.completions.create(model="openai:gpt-test", messages=[{"role": "user", "content": "hi"}], **kw)


def test_requests_per_minute_refuses_the_sixth_with_openai_headers(fake, start_gateway):
    gw = start_gateway(openai_config(fake, budget_doc([
        {"name": "per-caller-rpm", "per": "identity", "requests": 5, "window": "1m"}])))
    alice = client(gw, ALICE_KEY)
    for _ in range(5):
        assert ask(alice).choices[0].message.content == "echo: hi"
    with pytest.raises(openai.RateLimitError) as info:
        ask(alice)
    r = info.value.response
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["x-ratelimit-limit-requests"] == "5"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    body = r.json()["error"]
    assert body["code"] == "rate_limit_exceeded" and body["type"] == "requests"
    assert "per-caller-rpm" in body["message"]
    assert len(fake.requests_to("/v1/chat/completions", "POST")) == 5, "the refused request never went upstream"
    # One counter per identity: bob still has his five; another proxy is not counted at all.
    assert ask(client(gw, BOB_KEY)).choices
    assert ask(client(gw, ALICE_KEY, "ai.team-b")).choices
    # The audit line names the limit; the refusal is counted per limit.
    refused = [a for a in audit_lines(gw) if a.get("status") == 429]
    assert len(refused) == 1 and refused[0]["budget_limit"] == "ai/limits/per-caller-rpm", refused
    assert refused[0]["identity"] == "alice"
    assert metric(gw, "portcullis_budget_refusals_total", budget="ai/limits", limit="per-caller-rpm") == 1
    assert metric(gw, "portcullis_budget_consumed_total", budget="ai/limits", limit="per-caller-rpm") == 6


def test_token_limit_reserves_reconciles_and_refuses(fake, start_gateway):
    gw = start_gateway(openai_config(fake, budget_doc([
        {"name": "team-tokens", "per": "proxy", "tokens": 1000, "window": "1h"}])))
    c = client(gw)
    # Reserves input estimate + 600; the fake reports 11 + 3 = 14 tokens.
    assert ask(c, max_tokens=600).usage.total_tokens == 14
    time.sleep(0.1)
    # Fits only because the first reservation was replaced by the 14 tokens reported.
    assert ask(c, max_tokens=600).choices
    time.sleep(0.1)
    with pytest.raises(openai.RateLimitError) as info:
        ask(c, max_tokens=990)
    h = info.value.response.headers
    assert h["x-ratelimit-limit-tokens"] == "1000"
    assert h["x-ratelimit-remaining-tokens"] == "972", "1000 - 2 x 14 reported tokens"
    assert info.value.response.json()["error"]["type"] == "tokens"
    # A smaller request still fits.
    assert ask(c, max_tokens=100).choices
    assert metric(gw, "portcullis_budget_consumed_total", budget="ai/limits", limit="team-tokens") == 42
    # Without max_tokens, the limit's default allowance (4096) is reserved: it cannot fit,
    # ever; the refusal says so and has no retry-after (waiting would not help).
    with pytest.raises(openai.RateLimitError) as never:
        ask(c)
    assert "can never fit" in never.value.response.json()["error"]["message"]
    assert "retry-after" not in never.value.response.headers
    assert never.value.response.headers["x-ratelimit-limit-tokens"] == "1000"


def test_usd_monthly_limit_with_prices_refuses_at_the_right_spend(fake, start_gateway):
    # $1000 per million output tokens: 0.001 USD a token; input is free.
    gw = start_gateway(openai_config(
        fake, budget_doc([{"name": "team-monthly-spend", "per": "proxy", "usd": "0.02", "window": "month",
                           "models": ["openai:*"]}]),
        pricing=[{"models": ["gpt-test*"], "input": "0", "output": "1000"}]))
    c = client(gw)
    # Each request reserves 10 output tokens (0.010 USD) and is charged its 3 (0.003 USD):
    # 0.000 → 0.003 → 0.006 → 0.009 → 0.012, and then 0.012 + 0.010 > 0.02.
    for _ in range(4):
        assert ask(c, max_tokens=10).choices
        time.sleep(0.05)
    with pytest.raises(openai.RateLimitError) as info:
        ask(c, max_tokens=10)
    err = info.value.response.json()["error"]
    assert err["code"] == "insufficient_quota" and "team-monthly-spend" in err["message"]
    assert "0.012 of 0.02 USD" in err["message"], err["message"]
    assert metric(gw, "portcullis_budget_consumed_total", budget="ai/limits", limit="team-monthly-spend") == 12000


def test_stream_usage_is_counted_though_the_client_did_not_ask_and_its_stream_is_unchanged(fake, start_gateway):
    gw = start_gateway(openai_config(fake, budget_doc([
        {"name": "tokens", "per": "identity", "tokens": 100000, "window": "1d"}])))

    def stream(proxy_id: str) -> list[str]:
        r = gw.raw("POST", f"/v1/model-router/{proxy_id}/chat/completions",
                   {"model": "openai:gpt-test", "stream": True, "max_tokens": 50,
                    "messages": [{"role": "user", "content": "count me"}]})
        assert r.status == 200, r.text
        return [line for line in r.text.split("\n") if line.startswith("data:")]

    counted = stream("ai.team-a")
    plain = stream("ai.team-b")  # no budget: the gateway leaves the request alone

    sent = fake.requests_to("/v1/chat/completions", "POST")
    assert sent[0].json["stream_options"] == {"include_usage": True}, "the gateway asks for usage"
    assert "stream_options" not in sent[1].json

    def normal(lines):
        return [json.loads(x[5:]) if x != "data: [DONE]" else x for x in lines]
    a, b = normal(counted), normal(plain)
    for chunk in a[:-1]:
        chunk.pop("created")
    for chunk in b[:-1]:
        chunk.pop("created")
    assert a == b, "the client's stream is what it would be without the budget"
    assert all("usage" not in c for c in a[:-1])
    # 11 prompt + 3 completion tokens, as the fake reported in the hidden chunk.
    time.sleep(0.1)
    assert metric(gw, "portcullis_budget_consumed_total", budget="ai/limits", limit="tokens") == 14

    # With the SDK: a client that asks for usage itself still gets it.
    chunks = list(client(gw).chat.completions.create(
        model="openai:gpt-test", messages=[{"role": "user", "content": "x"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 14


def test_a_virtual_model_is_counted_as_its_target(fake, start_gateway):
    smart = [{"name": "smart", "targets": [{"model": "openai:gpt-test"}]}]
    gw = start_gateway(docs(
        secret_doc("openai-key", PROVIDER_KEY), client_keys(), provider_doc("openai", fake.base_url),
        proxy(models=smart, defaultModel="smart"),
        budget_doc([{"name": "openai-rpm", "per": "model", "requests": 2, "window": "1m",
                     "models": ["openai:*"]}])))
    c = client(gw)
    assert c.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}]).choices
    # No model named: the virtual default, counted the same.
    r = gw.raw("POST", "/v1/model-router/ai.team-a/chat/completions",
               {"messages": [{"role": "user", "content": "hi"}]})
    assert r.status == 200, r.text
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}])
    assert "openai-rpm" in info.value.response.json()["error"]["message"]
    # The provider-qualified target shares the counter.
    with pytest.raises(openai.RateLimitError):
        ask(c)
    assert len(fake.requests_to("/v1/chat/completions", "POST")) == 2


def test_a_model_the_route_refuses_is_left_to_it_and_never_counted(fake, start_gateway):
    gw = start_gateway(openai_config(
        fake, budget_doc([{"name": "spend", "per": "identityModel", "usd": "5", "window": "month",
                           "models": ["openai:*"]}]),
        pricing=[{"models": ["gpt-test*"], "input": "1", "output": "1"}]))
    # A model the provider does not serve is the route's 404 (not the budget's "no price"),
    # on the Model Router and on the native route alike; nothing is counted for it.
    for _ in range(3):
        with pytest.raises(openai.NotFoundError):
            client(gw).chat.completions.create(model="openai:no-such-model",
                                               messages=[{"role": "user", "content": "hi"}])
        native = openai.OpenAI(base_url=gw.native_base(), api_key=CLIENT_KEY, max_retries=0, timeout=15)
        with pytest.raises(openai.NotFoundError):
            native.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert not [a for a in audit_lines(gw) if a.get("budget_limit")]
    assert metric(gw, "portcullis_budget_consumed_total", budget="ai/limits", limit="spend") == 0
    assert fake.requests_to("/v1/chat/completions", "POST") == []
    assert ask(client(gw)).choices


def test_native_usage_is_read_although_the_provider_compresses_for_the_client(fake, start_gateway):
    fake.gzip_json = True
    gw = start_gateway(openai_config(fake, budget_doc([
        {"name": "team-tokens", "per": "proxy", "tokens": 100000, "window": "1h"}])))
    native = openai.OpenAI(base_url=gw.native_base(), api_key=CLIENT_KEY, max_retries=0, timeout=15)
    # The SDK accepts gzip; the gateway asks the provider for an answer it can read.
    assert native.chat.completions.create(model="gpt-test", max_tokens=50,
                                          messages=[{"role": "user", "content": "hi"}]).usage.total_tokens == 14
    sent = fake.requests_to("/v1/chat/completions", "POST")
    assert sent[0].header("accept-encoding") == "identity"
    time.sleep(0.1)
    assert metric(gw, "portcullis_budget_consumed_total", budget="ai/limits", limit="team-tokens") == 14


def test_embeddings_reserve_no_output_allowance(fake, start_gateway):
    gw = start_gateway(docs(
        secret_doc("openai-key", PROVIDER_KEY), client_keys(),
        provider_doc("openai", fake.base_url, static=("gpt-test", "text-embedding-3-small")), proxy(),
        budget_doc([{"name": "team-tokens", "per": "proxy", "tokens": 1000, "window": "1h"}])))
    # A chat request without max_tokens reserves the default 4096 output tokens: it cannot
    # fit. An embeddings request generates none, so it reserves its input only.
    with pytest.raises(openai.RateLimitError):
        ask(client(gw))
    for c in (client(gw), openai.OpenAI(base_url=gw.native_base(), api_key=CLIENT_KEY, max_retries=0, timeout=15)):
        model = "openai:text-embedding-3-small" if c.base_url.path.endswith("model-router/ai.team-a/") \
            else "text-embedding-3-small"
        r = c.embeddings.create(model=model, input="hello there")
        assert r.data and r.usage.prompt_tokens > 0
    reported = 2 * r.usage.prompt_tokens
    time.sleep(0.1)
    assert metric(gw, "portcullis_budget_consumed_total", budget="ai/limits", limit="team-tokens") == reported


def native_config(anthropic_fake, gemini_fake, limits) -> str:  # noqa: F811
    return docs(
        secret_doc("provider-key", PROVIDER_KEY), client_keys(),
        provider_doc("anthropic", anthropic_fake.base_url, secret="provider-key", type_="anthropic",
                     static=[MODELS["anthropic"]]),
        provider_doc("gemini", gemini_fake.base_url, secret="provider-key", type_="gemini",
                     static=[MODELS["gemini"]]),
        proxy(providers=("anthropic", "gemini")),
        budget_doc(limits))


def test_native_anthropic_and_gemini_routes_refuse_in_their_shapes(anthropic_fake, gemini_fake,  # noqa: F811
                                                                    start_gateway):
    gw = start_gateway(native_config(anthropic_fake, gemini_fake, [
        {"name": "per-model", "per": "identityModel", "requests": 2, "window": "1m"}]))
    claude = anthropic.Anthropic(api_key=CLIENT_KEY, base_url=gw.native_base(prefix="anthropic"), max_retries=0,
                                 timeout=15)
    for _ in range(2):
        claude.messages.create(model=MODELS["anthropic"], max_tokens=16, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.RateLimitError) as info:
        claude.messages.create(model=MODELS["anthropic"], max_tokens=16, messages=[{"role": "user", "content": "x"}])
    body = info.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error", body
    assert info.value.response.headers["retry-after"]
    # Token counting costs nothing and is never counted.
    assert claude.messages.count_tokens(model=MODELS["anthropic"],
                                        messages=[{"role": "user", "content": "x"}]).input_tokens >= 0

    gemini = genai.Client(api_key=CLIENT_KEY, http_options=genai_types.HttpOptions(
        base_url=gw.native_base(prefix="gemini"), timeout=15_000))
    for _ in range(2):
        gemini.models.generate_content(model=MODELS["gemini"], contents="x")
    with pytest.raises(genai_errors.ClientError) as ginfo:
        gemini.models.generate_content(model=MODELS["gemini"], contents="x")
    assert ginfo.value.code == 429 and ginfo.value.status == "RESOURCE_EXHAUSTED"
    assert len(anthropic_fake.requests_to("/v1/messages", "POST")) == 2
    assert len([r for r in gemini_fake.all_requests() if "generateContent" in r.path]) == 2


def test_native_token_budget_settles_with_the_providers_reported_usage(anthropic_fake, gemini_fake,  # noqa: F811
                                                                       start_gateway):
    from fakes.base import Reply
    gw = start_gateway(native_config(anthropic_fake, gemini_fake, [
        {"name": "tokens", "per": "proxy", "tokens": 100000, "window": "1h"}]))
    anthropic_fake.queue(Reply(text="ok", input_tokens=12, output_tokens=5, cached_tokens=3))
    claude = anthropic.Anthropic(api_key=CLIENT_KEY, base_url=gw.native_base(prefix="anthropic"), max_retries=0,
                                 timeout=15)
    claude.messages.create(model=MODELS["anthropic"], max_tokens=64, messages=[{"role": "user", "content": "x"}])
    time.sleep(0.1)
    # 12 input + 3 cached input + 5 output.
    assert metric(gw, "portcullis_budget_consumed_total", budget="ai/limits", limit="tokens") == 20
    anthropic_fake.queue(Reply(text="streamed", input_tokens=7, output_tokens=4))
    with claude.messages.stream(model=MODELS["anthropic"], max_tokens=64,
                                messages=[{"role": "user", "content": "x"}]) as s:
        assert s.get_final_text() == "streamed"
    time.sleep(0.1)
    assert metric(gw, "portcullis_budget_consumed_total", budget="ai/limits", limit="tokens") == 31


def test_check_reports_every_kind_of_bad_budget(tmp_path):
    bad = docs(
        secret_doc("openai-key", PROVIDER_KEY),
        provider_doc("openai", "http://127.0.0.1:9/v1"),
        proxy(),
        budget_doc([
            {"name": "a", "per": "team", "requests": 5, "window": "1m"},
            {"name": "b", "per": "identity", "requests": 0, "window": "1m"},
            {"name": "c", "per": "identity", "tokens": 5, "window": "31d"},
            {"name": "d", "per": "proxy", "usd": "10", "window": "month"},
        ], targets=["team-a", "nope"], store={"redis": {"urlSecretRef": {"name": "missing"}}}),
    )
    (tmp_path / "bad.yaml").write_text(bad)
    out = subprocess.run([str(portcullis_bin()), "check", str(tmp_path / "bad.yaml")], capture_output=True,
                         text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 1, out
    text = out.stdout + out.stderr
    for needle in ["unknown per `team`", "spec.limits[1].requests", "outside 1s..30d", "ProxyNotFound",
                   "LlmProxy ai/nope not found", "SecretNotFound", "PriceNotFound", "openai:gpt-test"]:
        assert needle in text, f"{needle!r} missing from:\n{text}"
    assert "LlmBudget ai/limits" in text


def test_a_client_that_disconnects_mid_stream_is_charged_what_was_produced(fake, start_gateway):
    import http.client
    import threading

    from budget_support import wait_for
    gw = start_gateway(openai_config(fake, budget_doc([
        {"name": "tokens", "per": "proxy", "tokens": 100000, "window": "1h"}])))
    fake.stream_gate = threading.Event()
    body = json.dumps({"model": "openai:gpt-test", "stream": True, "max_tokens": 5000,
                       "messages": [{"role": "user", "content": "a long answer please"}]})
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("POST", "/v1/model-router/ai.team-a/chat/completions", body,
                 {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.fp.readline()  # the first bytes of the stream arrived
    conn.close()  # the client goes away mid-stream
    fake.stream_gate.set()
    consumed = wait_for(lambda: metric(gw, "portcullis_budget_consumed_total", budget="ai/limits", limit="tokens"),
                        10, "the reservation to settle")
    # Settled with what was produced (reported usage or an estimate from the bytes sent):
    # neither nothing nor the whole 5000-token allowance.
    assert 0 < consumed < 1000, consumed


def test_translated_router_stream_is_counted_and_keeps_usage_from_the_client(anthropic_fake, gemini_fake,  # noqa: F811
                                                                              start_gateway):
    from fakes.base import Reply
    gw = start_gateway(native_config(anthropic_fake, gemini_fake, [
        {"name": "tokens", "per": "proxy", "tokens": 100000, "window": "1h"}]))
    anthropic_fake.queue(Reply(text="translated", input_tokens=21, output_tokens=8))
    chunks = list(client(gw).chat.completions.create(
        model=f"anthropic:{MODELS['anthropic']}", messages=[{"role": "user", "content": "x"}], stream=True,
        max_tokens=64))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "translated"
    assert all(c.usage is None and c.choices for c in chunks), "no usage chunk the client did not ask for"
    time.sleep(0.1)
    assert metric(gw, "portcullis_budget_consumed_total", budget="ai/limits", limit="tokens") == 29


def test_native_bedrock_refuses_with_throttling_exception(aws_env, store, control, start_gateway):  # noqa: F811
    import botocore.exceptions
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
                        "spec": {"providers": [{"providerRef": {"name": "bedrock-us"}}]}}) + "\n",
            budget_doc([{"name": "per-model", "per": "model", "requests": 1, "window": "1m",
                         "models": ["bedrock:*"]}])))
        client_ = runtime_client(gw)
        messages = [{"role": "user", "content": [{"text": "k"}]}]
        client_.converse(modelId=CLAUDE, messages=messages)
        with pytest.raises(botocore.exceptions.ClientError) as err:
            client_.converse(modelId=CLAUDE, messages=messages)
        assert err.value.response["Error"]["Code"] == "ThrottlingException"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert "per-model" in err.value.response["Error"]["Message"]
        assert len(fake_bedrock.requests) == 1
    finally:
        fake_bedrock.stop()
