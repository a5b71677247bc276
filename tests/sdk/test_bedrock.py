"""AWS Bedrock end to end: keyless credentials (IRSA through a fake STS, EKS Pod Identity),
SigV4 verified by botocore's own signer in the Bedrock fake, boto3 on the native route, the
openai SDK through the Model Router, discovery from ListInferenceProfiles, refresh across
expiry."""

from __future__ import annotations

import concurrent.futures
import io
import json
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import boto3
import botocore.config
import botocore.exceptions
import openai
import pytest
from botocore.eventstream import EventStreamBuffer

from fakes.aws import (POD_IDENTITY_TOKEN, ROLE_ARN, WEB_IDENTITY_TOKEN, CredentialStore, FakeBedrock,
                       FakeIMDS, FakePodIdentity, FakeSTS, Reply, event, event_frame, exception)
from harness import (CLIENT_KEY, PROVIDER_KEY, Gateway, assert_no_secret, docs, proxy_doc, run_check, secret_doc,
                     yaml_list)

# Minted credentials may go to the fakes on 127.0.0.1 only because the operator says so.
pytestmark = pytest.mark.usefixtures("trust_loopback_identity")


REGION = "us-east-1"
CLAUDE = "us.anthropic.claude-sonnet-4-20250514-v1:0"
# What the client signs with: never valid upstream, and never forwarded.
CLIENT_AKID = "AKIACLIENTONLY0000001"
CLIENT_SECRET = "client-secret-key-never-upstream-0001"
CLIENT_TOKEN = "client-session-token-never-upstream-0001"

AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
           "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ROLE_ARN",
           "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_SESSION_NAME", "AWS_ENDPOINT_URL",
           "AWS_ENDPOINT_URL_STS", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
           "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_EC2_METADATA_SERVICE_ENDPOINT",
           "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE")


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def store() -> CredentialStore:
    return CredentialStore()


@pytest.fixture
def sts(store: CredentialStore) -> Iterator[FakeSTS]:
    s = FakeSTS(store).start()
    yield s
    s.stop()


@pytest.fixture
def runtime(store: CredentialStore) -> Iterator[FakeBedrock]:
    b = FakeBedrock(store, REGION).start()
    yield b
    b.stop()


@pytest.fixture
def control(store: CredentialStore) -> Iterator[FakeBedrock]:
    b = FakeBedrock(store, REGION).start()
    yield b
    b.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A clean AWS environment for the gateway: no keys, empty config files, no IMDS."""
    for k in AWS_ENV:
        monkeypatch.delenv(k, raising=False)
    empty = tmp_path / "aws-empty"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


@pytest.fixture
def irsa(aws_env: pytest.MonkeyPatch, sts: FakeSTS, tmp_path: Path) -> FakeSTS:
    """Only AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN and AWS_ENDPOINT_URL_STS (as IRSA sets)."""
    token = tmp_path / "eks-token"
    token.write_text(WEB_IDENTITY_TOKEN)
    aws_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    aws_env.setenv("AWS_ROLE_ARN", ROLE_ARN)
    aws_env.setenv("AWS_ENDPOINT_URL_STS", sts.url)
    return sts


def bedrock_provider(name: str, runtime_url: str, control_url: str, *,
                     providers: Optional[Sequence[str]] = None,
                     regions: Optional[Sequence[str]] = None,
                     auth: str = "{workloadIdentity: {}}") -> str:
    block = [f"region: {REGION}", f"controlPlaneUrl: {control_url}"]
    if providers is not None:
        block.append(f"allowedProviders: {yaml_list(providers)}")
    if regions is not None:
        block.append(f"allowedInferenceRegions: {yaml_list(regions)}")
    return ("apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\n"
            f"metadata: {{name: {name}, namespace: ai}}\nspec:\n  type: bedrock\n"
            f"  baseUrl: {runtime_url}\n  auth: {auth}\n  bedrock: {{{', '.join(block)}}}\n")


def config(runtime: FakeBedrock, control: FakeBedrock, **kw) -> str:
    return docs(bedrock_provider("bedrock-us", runtime.url, control.url, **kw),
                proxy_doc("team-a", ["bedrock-us"]))


def runtime_client(gw, proxy: str = "ai.team-a"):
    """boto3 as a user configures it: endpoint_url at the gateway, its own (useless) keys."""
    return boto3.client(
        "bedrock-runtime", region_name=REGION, endpoint_url=f"{gw.url}/v1/bedrock/{proxy}",
        aws_access_key_id=CLIENT_AKID, aws_secret_access_key=CLIENT_SECRET,
        aws_session_token=CLIENT_TOKEN,
        config=botocore.config.Config(retries={"total_max_attempts": 1}, read_timeout=15))


def assert_gateway_signed(fake: FakeBedrock, n: Optional[int] = None) -> None:
    assert fake.requests, "the Bedrock fake received nothing"
    bad = [(r.target, r.verdict) for r in fake.requests if r.verdict != "ok"]
    assert not bad, f"requests whose SigV4 signature the fake refused: {bad}"
    if n is not None:
        assert len(fake.requests) == n, [r.target for r in fake.requests]
    for r in fake.requests:
        raw = json.dumps(r.headers)
        assert CLIENT_AKID not in raw and CLIENT_TOKEN not in raw, f"client credentials forwarded: {raw}"
        assert CLIENT_KEY not in raw


def assert_no_minted_secret(store: CredentialStore, *texts: str) -> None:
    for s in store.secrets():
        for t in texts:
            assert s not in t, "an AWS secret key or session token leaked"


# ------------------------------------------------------------------ event-stream encoder check
def test_fake_event_stream_frames_parse_with_botocore():
    """The fake's frame encoder is checked against botocore's own event-stream parser."""
    buf = EventStreamBuffer()
    data = (event("messageStart", {"role": "assistant"})
            + event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hi"}})
            + exception("throttlingException", "slow down"))
    for i in range(0, len(data), 5):
        buf.add_data(data[i:i + 5])
    msgs = list(buf)
    assert [m.headers[":message-type"] for m in msgs] == ["event", "event", "exception"]
    assert msgs[1].headers[":event-type"] == "contentBlockDelta"
    assert json.loads(msgs[1].payload)["delta"] == {"text": "hi"}
    assert msgs[2].headers[":exception-type"] == "throttlingException"
    broken = bytearray(event_frame([(":event-type", "x")], b"{}"))
    broken[-1] ^= 1
    bad = EventStreamBuffer()
    bad.add_data(bytes(broken))
    with pytest.raises(Exception):
        list(bad)


# ------------------------------------------------------------------ native route (boto3)
def test_boto3_converse_stream_with_irsa_only(irsa, runtime, control, start_gateway, store):
    """Must show: only the IRSA variables set; boto3 converse_stream through /v1/bedrock/{proxy}
    reaches a Bedrock fake that verifies the gateway's SigV4 signature."""
    gw = start_gateway(config(runtime, control))
    client = runtime_client(gw)
    out = client.converse_stream(
        modelId=CLAUDE,
        messages=[{"role": "user", "content": [{"text": "hello bedrock"}]}],
        inferenceConfig={"maxTokens": 64})
    events = list(out["stream"])
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == f"[{CLAUDE}] you said: hello bedrock"
    assert events[0] == {"messageStart": {"role": "assistant"}}
    stop = [e for e in events if "messageStop" in e]
    assert stop and stop[0]["messageStop"]["stopReason"] == "end_turn"
    meta = [e for e in events if "metadata" in e]
    assert meta and meta[0]["metadata"]["usage"]["inputTokens"] == 21
    assert_gateway_signed(runtime, 1)
    rec = runtime.requests[0]
    # boto3 percent-encodes the ':' of the model ID; the path reaches Bedrock as boto3 wrote it.
    assert rec.target == "/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/converse-stream"
    assert rec.json["messages"][0]["content"][0]["text"] == "hello bedrock"
    assert rec.header("x-amz-security-token") in {m.token for m in store.by_key.values()}
    assert irsa.calls == 1
    assert_no_minted_secret(store, gw.log_text())


def test_boto3_converse_and_errors_in_bedrock_shape(irsa, runtime, control, start_gateway):
    gw = start_gateway(config(runtime, control))
    client = runtime_client(gw)
    r = client.converse(modelId="us.amazon.nova-pro-v1:0",
                        messages=[{"role": "user", "content": [{"text": "ping"}]}])
    assert r["output"]["message"]["content"][0]["text"] == "[us.amazon.nova-pro-v1:0] you said: ping"
    assert r["usage"]["cacheReadInputTokens"] == 8
    # An upstream error body passes through; boto3 raises its usual exception.
    runtime.replies.append(Reply(status=429, error_body={"message": "Too many requests, please wait."}))
    with pytest.raises(botocore.exceptions.ClientError) as err:
        client.converse(modelId="us.amazon.nova-pro-v1:0",
                        messages=[{"role": "user", "content": [{"text": "again"}]}])
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert "Too many requests" in str(err.value)
    # An error the gateway raises itself (unknown proxy) is in Bedrock's shape too.
    with pytest.raises(botocore.exceptions.ClientError) as err:
        runtime_client(gw, proxy="ai.nope").converse(
            modelId="x", messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert "ai.nope" in err.value.response["Error"]["Message"]
    assert_gateway_signed(runtime, 2)


def test_client_auth_with_boto3_takes_the_key_from_an_event_hook(irsa, runtime, control, start_gateway):
    """Under `clientAuth`, a boto3 client cannot send a Bedrock API key as a bearer token over
    plain http (botocore insists on https), so the README shows a `before-send` hook adding
    `x-api-key`. Its SigV4 `Authorization` is no credential for the gateway, and neither the
    hook's key nor the client's signature reaches Bedrock."""
    clients = ("apiVersion: v1\nkind: Secret\nmetadata: {name: client-keys, namespace: ai}\n"
               f"stringData: {{app: {CLIENT_KEY}}}\n")
    proxy = ("apiVersion: portcullis.dev/v1alpha1\nkind: LlmProxy\nmetadata: {name: team-a, namespace: ai}\n"
             "spec:\n  providers: [{providerRef: {name: bedrock-us}}]\n"
             "  clientAuth: {apiKeys: {secretRef: {name: client-keys}}}\n")
    gw = start_gateway(docs(bedrock_provider("bedrock-us", runtime.url, control.url), clients, proxy))
    messages = [{"role": "user", "content": [{"text": "ping"}]}]
    with pytest.raises(botocore.exceptions.ClientError) as err:
        runtime_client(gw).converse(modelId=CLAUDE, messages=messages)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert not runtime.requests, "an unauthenticated client reached Bedrock"

    client = runtime_client(gw)
    client.meta.events.register("before-send.bedrock-runtime.*",
                                lambda request, **_: request.headers.__setitem__("x-api-key", CLIENT_KEY))
    r = client.converse(modelId=CLAUDE, messages=messages)
    assert r["output"]["message"]["content"][0]["text"] == f"[{CLAUDE}] you said: ping"
    events = list(client.converse_stream(modelId=CLAUDE, messages=messages)["stream"])
    assert "metadata" in events[-1], events
    assert_gateway_signed(runtime, 2)


def test_control_plane_routes_go_to_the_control_plane(irsa, runtime, control, start_gateway):
    gw = start_gateway(config(runtime, control))
    client = boto3.client("bedrock", region_name=REGION, endpoint_url=f"{gw.url}/v1/bedrock/ai.team-a",
                          aws_access_key_id=CLIENT_AKID, aws_secret_access_key=CLIENT_SECRET,
                          aws_session_token=CLIENT_TOKEN)
    page = client.list_inference_profiles(maxResults=2)
    assert [p["inferenceProfileId"] for p in page["inferenceProfileSummaries"]] == [
        "us.anthropic.claude-sonnet-4-20250514-v1:0", "us.amazon.nova-pro-v1:0"]
    assert page["nextToken"]
    fm = client.list_foundation_models()
    assert fm["modelSummaries"][0]["modelId"] == "amazon.nova-pro-v1:0"
    native = [r for r in control.requests if r.target.startswith("/inference-profiles?maxResults=2")]
    assert native, [r.target for r in control.requests]
    assert not [r for r in runtime.requests if "inference-profiles" in r.target or "foundation" in r.target]
    assert_gateway_signed(control)


# ------------------------------------------------------------------ Model Router (openai SDK)
def test_router_streams_a_translated_answer(irsa, runtime, control, start_gateway):
    """Must show: the openai SDK through the router with bedrock:<profile> streams a translated
    answer (the upstream spoke ConverseStream event-stream frames)."""
    gw = start_gateway(config(runtime, control))
    runtime.chunk_delay = 0.02
    client = gw.router_client()
    stream = client.chat.completions.create(
        model=f"bedrock:{CLAUDE}", stream=True, stream_options={"include_usage": True},
        max_tokens=100, temperature=0.3, stop=["END"],
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "first"},
                  {"role": "user", "content": "second"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"[{CLAUDE}] you said: first second"
    assert all(c.model == f"bedrock:{CLAUDE}" for c in chunks)
    assert {c.id for c in chunks} == {f"chatcmpl-{runtime.last_request_id}"}
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens == 21 + 8 + 4 and usage.completion_tokens == 9
    assert usage.prompt_tokens_details.cached_tokens == 8
    assert_gateway_signed(runtime, 1)
    rec = runtime.requests[0]
    assert rec.target == "/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/converse-stream"
    body = rec.json
    assert body["system"] == [{"text": "Be brief."}]
    # Consecutive user turns merged, as Bedrock requires.
    assert body["messages"] == [{"role": "user", "content": [{"text": "first"}, {"text": "second"}]}]
    assert body["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.3, "stopSequences": ["END"]}
    assert "model" not in body


def test_router_non_streaming_keeps_images_and_counts_dropped_parts(irsa, runtime, control, start_gateway):
    gw = start_gateway(config(runtime, control))
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    raw = gw.router_client().chat.completions.with_raw_response.create(
        model=f"bedrock:{CLAUDE}",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "describe"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}])
    r = raw.parse()
    assert raw.headers.get("x-portcullis-dropped-parts") == "1"
    assert r.choices[0].message.content == f"[{CLAUDE}] you said: describe"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 33 and r.usage.total_tokens == 42
    content = runtime.requests[0].json["messages"][0]["content"]
    assert content == [{"text": "describe"}, {"image": {"format": "png", "source": {"bytes": png}}}]
    assert runtime.requests[0].target.endswith("/converse")


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_router_tool_call_round_trip(irsa, runtime, control, start_gateway):
    gw = start_gateway(config(runtime, control))
    client = gw.router_client()
    runtime.replies.append(Reply(text="Let me check.", tool=("tooluse_abc123", "get_weather", {"city": "Paris"})))
    stream = client.chat.completions.create(
        model=f"bedrock:{CLAUDE}", stream=True, tools=TOOLS, tool_choice="required",
        messages=[{"role": "user", "content": "Weather in Paris?"}])
    chunks = list(stream)
    calls: dict[int, dict] = {}
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            entry = calls.setdefault(tc.index, {"id": None, "name": None, "args": ""})
            entry["id"] = tc.id or entry["id"]
            entry["name"] = (tc.function.name if tc.function else None) or entry["name"]
            entry["args"] += (tc.function.arguments or "") if tc.function else ""
    assert calls == {0: {"id": "tooluse_abc123", "name": "get_weather", "args": '{"city": "Paris"}'}}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    first = runtime.requests[0].json
    assert first["toolConfig"]["toolChoice"] == {"any": {}}
    assert first["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["required"] == ["city"]

    r = client.chat.completions.create(
        model=f"bedrock:{CLAUDE}", tools=TOOLS,
        messages=[{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": "Let me check.", "tool_calls": [
                      {"id": "tooluse_abc123", "type": "function",
                       "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                  {"role": "tool", "tool_call_id": "tooluse_abc123", "content": "18C and cloudy"}])
    assert r.choices[0].message.content == f"[{CLAUDE}] the tool said: 18C and cloudy"
    second = runtime.requests[1].json
    assert second["messages"][1] == {"role": "assistant", "content": [
        {"text": "Let me check."},
        {"toolUse": {"toolUseId": "tooluse_abc123", "name": "get_weather", "input": {"city": "Paris"}}}]}
    assert second["messages"][2] == {"role": "user", "content": [
        {"toolResult": {"toolUseId": "tooluse_abc123", "content": [{"text": "18C and cloudy"}]}}]}
    # Non-streaming tool call answer too.
    runtime.replies.append(Reply(tool=("tooluse_2", "get_weather", {"city": "Oslo"})))
    r = client.chat.completions.create(model=f"bedrock:{CLAUDE}", tools=TOOLS,
                                       messages=[{"role": "user", "content": "Oslo?"}])
    assert r.choices[0].finish_reason == "tool_calls"
    assert r.choices[0].message.tool_calls[0].id == "tooluse_2"
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    assert_gateway_signed(runtime, 3)


def test_router_guardrail_and_mid_stream_exception(irsa, runtime, control, start_gateway):
    gw = start_gateway(config(runtime, control))
    client = gw.router_client()
    runtime.replies.append(Reply(text="Sorry.", stop_reason="guardrail_intervened"))
    r = client.chat.completions.create(model=f"bedrock:{CLAUDE}", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].finish_reason == "content_filter"
    runtime.replies.append(Reply(text="partial answer", exception=("throttlingException", "Too many tokens")))
    with pytest.raises(openai.APIError) as err:
        for _ in client.chat.completions.create(model=f"bedrock:{CLAUDE}", stream=True,
                                                messages=[{"role": "user", "content": "x"}]):
            pass
    assert "Too many tokens" in str(err.value)


# ------------------------------------------------------------------ discovery
EXPECTED = ["us.anthropic.claude-sonnet-4-20250514-v1:0", "us.amazon.nova-pro-v1:0",
            "apac.amazon.nova-lite-v1:0", "global.anthropic.claude-sonnet-4-5-20250929-v1:0"]


def test_models_lists_exactly_the_active_profiles_passing_the_filters(irsa, runtime, control, start_gateway):
    """Must show: /models = ACTIVE profiles (all pages) passing allowedProviders and
    allowedInferenceRegions (`ap` matching `apac.`); a `deepseek` prefix serves deepseek:<id>."""
    cfg = docs(
        bedrock_provider("bedrock-us", runtime.url, control.url, providers=["anthropic", "amazon"],
                         regions=["us", "ap", "global"]),
        bedrock_provider("bedrock-deepseek", runtime.url, control.url, providers=["deepseek"]),
        proxy_doc("team-a", [("bedrock-us", "bedrock"), ("bedrock-deepseek", "deepseek")]))
    gw = start_gateway(cfg)
    ids = [m.id for m in gw.router_client().models.list().data]
    assert ids == [f"bedrock:{i}" for i in EXPECTED] + ["deepseek:us.deepseek.r1-v1:0"]
    pages = [r for r in control.requests if r.path == "/inference-profiles"]
    assert len(pages) >= 2 * 3, "every page of both providers was fetched"
    assert any("nextToken=page%2F3%3D%3D" in r.target for r in pages), [r.target for r in pages]
    assert_gateway_signed(control)
    r = gw.router_client().chat.completions.create(
        model="deepseek:us.deepseek.r1-v1:0", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "[us.deepseek.r1-v1:0] you said: hi"
    assert r.model == "deepseek:us.deepseek.r1-v1:0"


# ------------------------------------------------------------------ credentials
def test_credentials_refresh_across_expiry_with_one_sts_call_each(irsa, runtime, control, start_gateway, store):
    """STS mints 6-second credentials (refreshed at half-life, 3 s); the fake refuses expired
    ones. Bursts of concurrent requests after each expiry cause exactly one STS call."""
    irsa.lifetime = 6.0
    irsa.delay = 0.3  # a slow STS widens the window in which concurrent requests could race
    gw = start_gateway(config(runtime, control))
    client = gw.router_client()

    def ask(i: int) -> str:
        r = client.chat.completions.create(model=f"bedrock:{CLAUDE}",
                                           messages=[{"role": "user", "content": f"n{i}"}])
        return r.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for round_ in range(3):
            answers = list(pool.map(ask, range(8)))
            assert answers == [f"[{CLAUDE}] you said: n{i}" for i in range(8)]
            assert irsa.calls == round_ + 1, f"round {round_}: {irsa.calls} STS calls"
            if round_ < 2:
                time.sleep(6.2)  # past the expiry of the credentials just used
    assert_gateway_signed(runtime, 24)
    keys = [r.access_key for r in runtime.requests]
    assert len(set(keys)) == 3, "each round signed with the credentials of its own STS call"
    assert_no_minted_secret(store, gw.log_text())


def test_eks_pod_identity(aws_env, store, runtime, control, start_gateway, tmp_path):
    agent = FakePodIdentity(store).start()
    try:
        token = tmp_path / "eks-pod-identity-token"
        token.write_text(POD_IDENTITY_TOKEN)
        aws_env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{agent.url}/v1/credentials")
        aws_env.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token))
        gw = start_gateway(config(runtime, control))
        out = runtime_client(gw).converse_stream(
            modelId=CLAUDE, messages=[{"role": "user", "content": [{"text": "pod identity"}]}])
        text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in out["stream"] if "contentBlockDelta" in e)
        assert text == f"[{CLAUDE}] you said: pod identity"
        assert agent.calls == 1
        assert_gateway_signed(runtime, 1)
        assert_no_minted_secret(store, gw.log_text())
    finally:
        agent.stop()


def test_no_aws_identity_is_a_clear_error_without_secrets(aws_env, runtime, control, start_gateway):
    gw = start_gateway(config(runtime, control))
    with pytest.raises(openai.APIStatusError) as err:
        gw.router_client().chat.completions.create(model=f"bedrock:{CLAUDE}",
                                                   messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 502
    assert "AWS" in err.value.message and "IRSA" in err.value.message
    with pytest.raises(botocore.exceptions.ClientError) as e2:
        runtime_client(gw).converse(modelId=CLAUDE, messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert e2.value.response["ResponseMetadata"]["HTTPStatusCode"] == 502
    assert not runtime.requests, "nothing unsigned may reach Bedrock"


def test_bedrock_api_key_is_sent_as_bearer(aws_env, store, control, start_gateway):
    fake = FakeBedrock(store, REGION, bearer=PROVIDER_KEY).start()
    try:
        cfg = docs(secret_doc("bedrock-key", PROVIDER_KEY),
                   bedrock_provider("bedrock-us", fake.url, control.url,
                                    auth="{apiKey: {secretRef: {name: bedrock-key}}}"),
                   proxy_doc("team-a", ["bedrock-us"]))
        gw = start_gateway(cfg)
        r = runtime_client(gw).converse(modelId=CLAUDE, messages=[{"role": "user", "content": [{"text": "k"}]}])
        assert r["output"]["message"]["content"][0]["text"] == f"[{CLAUDE}] you said: k"
        rec = fake.requests[0]
        assert rec.verdict == "ok"
        assert rec.header("x-amz-security-token") is None and rec.header("x-amz-date") is None
        assert CLIENT_AKID not in json.dumps(rec.headers)
    finally:
        fake.stop()


def test_fake_bedrock_verifier_accepts_botocore_signatures_and_refuses_others(store, runtime):
    """The verifier is not a rubber stamp: boto3 signing with minted credentials passes, boto3
    with unknown keys, a tampered body, or expired credentials get 403."""
    minted = store.mint(60)

    def client(akid: str, secret: str, token: str):
        return boto3.client("bedrock-runtime", region_name=REGION, endpoint_url=runtime.url,
                            aws_access_key_id=akid, aws_secret_access_key=secret, aws_session_token=token,
                            config=botocore.config.Config(retries={"total_max_attempts": 1}))

    msg = [{"role": "user", "content": [{"text": "direct"}]}]
    good = client(minted.access_key, minted.secret_key, minted.token)
    assert good.converse(modelId=CLAUDE, messages=msg)["stopReason"] == "end_turn"
    assert runtime.requests[-1].verdict == "ok"
    with pytest.raises(botocore.exceptions.ClientError) as err:
        client(minted.access_key, "wrong-secret", minted.token).converse(modelId=CLAUDE, messages=msg)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert runtime.requests[-1].verdict == "SignatureDoesNotMatch"
    with pytest.raises(botocore.exceptions.ClientError):
        client(CLIENT_AKID, CLIENT_SECRET, CLIENT_TOKEN).converse(modelId=CLAUDE, messages=msg)
    assert runtime.requests[-1].verdict == "unknown access key"

    def tamper(request, **_):
        request.body = request.body.replace(b"direct", b"DIRECT")

    bad = client(minted.access_key, minted.secret_key, minted.token)
    bad.meta.events.register("before-send.bedrock-runtime.Converse", tamper)
    with pytest.raises(botocore.exceptions.ClientError):
        bad.converse(modelId=CLAUDE, messages=msg)
    # boto3 hashes the body into its signature (and sends no x-amz-content-sha256 over http).
    assert runtime.requests[-1].verdict in {"SignatureDoesNotMatch", "x-amz-content-sha256 does not match the body"}
    minted.expires = time.time() - 1
    with pytest.raises(botocore.exceptions.ClientError) as err:
        good.converse(modelId=CLAUDE, messages=msg)
    assert err.value.response["Error"]["Code"] == "ExpiredTokenException"


def make_test_ca(d: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl CLI)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=Portcullis Test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                               "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.pem", "-days", "1", "-extfile", "ext.cnf")
    return d / "ca.pem", d / "srv.pem", d / "srv.key"


def test_sts_over_tls_trusts_extra_ca_certs(aws_env, store, runtime, control, config_dir, tmp_path):
    """STS behind a private CA (a corporate TLS proxy, a VPC endpoint): trusted through
    --extra-ca-certs, refused without it."""
    ca, cert, key = make_test_ca(tmp_path)
    sts = FakeSTS(store).serve_tls(str(cert), str(key)).start()
    gateways: list[Gateway] = []
    try:
        token = tmp_path / "eks-token"
        token.write_text(WEB_IDENTITY_TOKEN)
        aws_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
        aws_env.setenv("AWS_ROLE_ARN", ROLE_ARN)
        aws_env.setenv("AWS_ENDPOINT_URL_STS", sts.url)
        (config_dir / "portcullis.yaml").write_text(config(runtime, control))
        untrusting = Gateway(config_dir, tmp_path / "gw-plain.log").start()
        gateways.append(untrusting)
        with pytest.raises(openai.APIStatusError) as err:
            untrusting.router_client().chat.completions.create(
                model=f"bedrock:{CLAUDE}", messages=[{"role": "user", "content": "x"}])
        assert err.value.status_code == 502 and sts.calls == 0
        trusting = Gateway(config_dir, tmp_path / "gw-ca.log", ["--extra-ca-certs", str(ca)]).start()
        gateways.append(trusting)
        r = trusting.router_client().chat.completions.create(
            model=f"bedrock:{CLAUDE}", messages=[{"role": "user", "content": "over tls"}])
        assert r.choices[0].message.content == f"[{CLAUDE}] you said: over tls"
        assert sts.calls == 1
        assert_gateway_signed(runtime)
    finally:
        for g in gateways:
            g.stop()
            assert_no_secret(g.log_text(), str(g.log_path))
            assert_no_minted_secret(store, g.log_text())
        sts.stop()


def test_streams_are_not_buffered(irsa, runtime, control, start_gateway):
    """Native and translated streams pass each frame on as it arrives."""
    gw = start_gateway(config(runtime, control))
    runtime.chunk_delay = 0.3  # ~12 frames: the whole answer takes over 3 s
    runtime.replies.append(Reply(text="one two three four five six seven eight"))
    t0 = time.monotonic()
    out = runtime_client(gw).converse_stream(
        modelId=CLAUDE, messages=[{"role": "user", "content": [{"text": "x"}]}])
    arrivals = [time.monotonic() - t0 for e in out["stream"] if "contentBlockDelta" in e]
    total = time.monotonic() - t0
    assert total > 3.0 and arrivals[0] < total - 2.0, (arrivals, total)

    runtime.replies.append(Reply(text="one two three four five six seven eight"))
    t0 = time.monotonic()
    arrivals = []
    for c in gw.router_client().chat.completions.create(
            model=f"bedrock:{CLAUDE}", stream=True, messages=[{"role": "user", "content": "x"}]):
        if c.choices and c.choices[0].delta.content:
            arrivals.append(time.monotonic() - t0)
    total = time.monotonic() - t0
    assert len(arrivals) == 8 and total > 3.0 and arrivals[0] < total - 2.0, (arrivals, total)


def test_event_streams_never_get_sse_keepalive_comments(irsa, runtime, control, start_gateway, aws_env):
    """SSE keep-alive comments are for `text/event-stream` only: a ConverseStream answer
    (`application/vnd.amazon.eventstream`, binary CRC-checked frames) that stalls longer than the
    keep-alive interval reaches the client byte for byte, while the router's translated SSE
    stream of the same stall does get comments."""
    aws_env.setenv("PORTCULLIS_SSE_KEEPALIVE", "300ms")
    gw = start_gateway(config(runtime, control))
    runtime.chunk_delay = 0.7
    runtime.replies.append(Reply(text="one two"))
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": "x"}]}]})
    r = gw.raw("POST", f"/v1/bedrock/ai.team-a/model/{CLAUDE}/converse-stream", body)
    assert r.status == 200 and r.headers["content-type"] == "application/vnd.amazon.eventstream", r.headers
    assert b"keep-alive" not in r.body
    buf = EventStreamBuffer()
    buf.add_data(r.body)
    kinds = [m.headers.get(":event-type") for m in buf]
    assert kinds[0] == "messageStart" and kinds[-1] == "metadata", kinds

    runtime.replies.append(Reply(text="one two"))
    body = json.dumps({"model": f"bedrock:{CLAUDE}", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    r = gw.raw("POST", "/v1/model-router/ai.team-a/chat/completions", body)
    assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert b": keep-alive" in r.body and r.body.rstrip().endswith(b"data: [DONE]")


def test_native_body_over_the_limit_is_refused_before_signing(irsa, runtime, control, start_gateway, aws_env):
    """SigV4 needs the whole body, so the native route reads it first, within the body limit."""
    aws_env.setenv("PORTCULLIS_MAX_BODY_BYTES", "100000")
    gw = start_gateway(config(runtime, control))
    with pytest.raises(botocore.exceptions.ClientError) as err:
        runtime_client(gw).converse(modelId=CLAUDE,
                                    messages=[{"role": "user", "content": [{"text": "x" * 200_000}]}])
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert not runtime.requests
    r = runtime_client(gw).converse(modelId=CLAUDE, messages=[{"role": "user", "content": [{"text": "small"}]}])
    assert r["stopReason"] == "end_turn"


def test_instance_role_from_imds(aws_env, store, runtime, control, start_gateway):
    """The last link of the chain: an EC2 node role through IMDSv2 (a session token first)."""
    imds = FakeIMDS(store).start()
    try:
        aws_env.delenv("AWS_EC2_METADATA_DISABLED")
        aws_env.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        gw = start_gateway(config(runtime, control))
        r = gw.router_client().chat.completions.create(
            model=f"bedrock:{CLAUDE}", messages=[{"role": "user", "content": "node role"}])
        assert r.choices[0].message.content == f"[{CLAUDE}] you said: node role"
        assert imds.credential_calls == 1
        assert any(rec.method == "PUT" for rec in imds.requests), "IMDSv2 session token not used"
        assert_gateway_signed(runtime)
        assert_no_minted_secret(store, gw.log_text())
    finally:
        imds.stop()


def test_static_keys_from_the_environment(aws_env, store, runtime, control, start_gateway):
    m = store.mint(3600, prefix="AKIA")
    aws_env.setenv("AWS_ACCESS_KEY_ID", m.access_key)
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", m.secret_key)
    aws_env.setenv("AWS_SESSION_TOKEN", m.token)
    gw = start_gateway(config(runtime, control))
    r = runtime_client(gw).converse(modelId=CLAUDE, messages=[{"role": "user", "content": [{"text": "env"}]}])
    assert r["output"]["message"]["content"][0]["text"] == f"[{CLAUDE}] you said: env"
    assert runtime.requests[0].access_key == m.access_key
    assert_gateway_signed(runtime, 1)
    assert_no_minted_secret(store, gw.log_text())


def test_check_online_and_the_startup_log_obtain_credentials_for_real(irsa, runtime, control, start_gateway,
                                                                      config_dir, store, aws_env):
    (config_dir / "portcullis.yaml").write_text(config(runtime, control))
    r = run_check(config_dir, "--online")
    assert r.returncode == 0, r.stderr
    assert "credentials LlmProvider ai/bedrock-us: obtained" in r.stdout
    assert irsa.calls == 1
    offline = run_check(config_dir)
    assert offline.returncode == 0 and "credentials" not in offline.stdout and irsa.calls == 1

    gw = start_gateway()
    deadline = time.monotonic() + 5
    while "credentials ready" not in gw.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "credentials ready" in gw.log_text() and "ai/bedrock-us" in gw.log_text()

    aws_env.setenv("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/not-trusted")
    bad = run_check(config_dir, "--online")
    assert bad.returncode == 1
    assert "CredentialsNotReady" in bad.stderr and "InvalidIdentityToken" in bad.stderr, bad.stderr
    assert_no_minted_secret(store, bad.stdout, bad.stderr, gw.log_text())


def test_application_inference_profile_arn_as_model_id(irsa, runtime, control, start_gateway):
    """boto3 encodes the `/` of an ARN model ID as %2F; Bedrock paths admit it (only there),
    and the signature covers the path exactly as sent."""
    gw = start_gateway(config(runtime, control))
    arn = "arn:aws:bedrock:us-east-1:111122223333:application-inference-profile/a1b2c3d4e5f6"
    out = runtime_client(gw).converse_stream(modelId=arn, messages=[{"role": "user", "content": [{"text": "arn"}]}])
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in out["stream"] if "contentBlockDelta" in e)
    assert text == f"[{arn}] you said: arn"
    assert "%2F" in runtime.requests[0].target
    assert_gateway_signed(runtime, 1)
    r = gw.raw("POST", "/v1/bedrock/ai.team-a/model/arn%3Ax%2F..%2F..%2Fadmin/converse", body={"messages": []})
    assert r.status == 400 and len(runtime.requests) == 1
    assert r.headers.get("x-amzn-errortype") == "ValidationException"
