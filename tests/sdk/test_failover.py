"""Virtual models, provider pools, retries and failover (contract §8), with the official
`openai` SDK as the client and fake upstreams that fail on command.

Two OpenAI fakes sit behind prefixes `one` and `two` (and an Anthropic fake behind
`anthropic`); a virtual model `smart` sends to `one` first (weight 1) and to `two` only when
`one` failed (weight 0), unless a test says otherwise.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Iterator, Optional

import openai
import pytest

from fakes.anthropic_upstream import FakeAnthropic
from fakes.base import Reply
from fakes.failing_openai import FailingOpenAI, Fault
from harness import CLIENT_KEY, PROVIDER_KEY, Gateway, docs, provider_doc, secret_doc

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def one() -> Iterator[FailingOpenAI]:
    f = FailingOpenAI("one").start()
    yield f
    f.stop()


@pytest.fixture
def two() -> Iterator[FailingOpenAI]:
    f = FailingOpenAI("two").start()
    yield f
    f.stop()


@pytest.fixture
def claude() -> Iterator[FakeAnthropic]:
    f = FakeAnthropic().start()
    yield f
    f.stop()


def proxy(models: list[dict], retry: Optional[dict] = None, providers: Optional[list[dict]] = None) -> str:
    spec: dict = {
        "providers": providers or [{"providerRef": {"name": "one"}, "prefix": "one"},
                                   {"providerRef": {"name": "two"}, "prefix": "two"},
                                   {"providerRef": {"name": "claude"}, "prefix": "anthropic"}],
        "models": models,
    }
    if retry is not None:
        spec["retry"] = retry
    return json.dumps({"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmProxy",
                       "metadata": {"name": "team-a", "namespace": "ai"}, "spec": spec}) + "\n"


def config(one: FailingOpenAI, two: FailingOpenAI, claude: FakeAnthropic, models: list[dict],
           retry: Optional[dict] = None) -> str:
    return docs(
        secret_doc("openai-key", PROVIDER_KEY),
        provider_doc("one", one.base_url),
        provider_doc("two", two.base_url),
        provider_doc("claude", claude.base_url, type_="anthropic", static=["claude-test"]),
        proxy(models, retry),
    )


FIRST_THEN_SECOND = [{"name": "smart", "targets": [{"model": "one:gpt-test", "weight": 1},
                                                    {"model": "two:gpt-test", "weight": 0}]}]


def audit_lines(gw: Gateway) -> list[dict]:
    return [json.loads(line) for line in gw.log_text().splitlines() if line.startswith('{"time"')]


def audit_for(gw: Gateway, request_id: str) -> dict:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for line in audit_lines(gw):
            if line["request_id"] == request_id:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no audit line for {request_id}:\n{gw.log_tail(20)}")


def attempts(line: dict) -> list[tuple[str, str]]:
    return [(a["target"], a["outcome"]) for a in line.get("attempts", [])]


def test_a_500_on_the_first_target_is_served_by_the_second(one, two, claude, start_gateway):
    gw = start_gateway(config(one, two, claude, FIRST_THEN_SECOND))
    client = gw.router_client()
    one.fail(Fault.status(500))
    raw = client.chat.completions.with_raw_response.create(model="smart", messages=HI,
                                                            extra_headers={"x-request-id": "fo-500"})
    r = raw.parse()
    assert r.choices[0].message.content == "echo: hi"
    assert r.model == "smart", "the answer names the virtual model the client asked for"
    assert raw.headers["x-portcullis-served-by"] == "two:gpt-test"
    assert len(one.chats()) == 1 and len(two.chats()) == 1
    # Each target got the request with its own model name.
    assert one.chats()[0].json["model"] == "gpt-test" and two.chats()[0].json["model"] == "gpt-test"
    line = audit_for(gw, "fo-500")
    assert line["status"] == 200 and line["model"] == "smart" and line["provider"] == "two"
    assert attempts(line) == [("one:gpt-test", "server_error"), ("two:gpt-test", "served")]
    assert all(isinstance(a["duration_ms"], int) for a in line["attempts"])

    # Streamed, and a reset connection instead of a 500.
    one.fail(Fault.reset())
    stream = client.chat.completions.create(model="smart", messages=HI, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hi"
    assert {c.model for c in chunks} == {"smart"}
    assert len(one.chats()) == 2 and len(two.chats()) == 2

    # Attempts are counted per target and outcome.
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.admin_port}/metrics", timeout=5) as m:
        text = m.read().decode()
    assert 'portcullis_upstream_attempts_total{proxy="ai.team-a",target="one:gpt-test",outcome="server_error"} 1' in text
    assert 'portcullis_upstream_attempts_total{proxy="ai.team-a",target="one:gpt-test",outcome="connect_error"} 1' in text
    assert 'portcullis_upstream_attempts_total{proxy="ai.team-a",target="two:gpt-test",outcome="served"} 2' in text


def test_insufficient_quota_moves_on_without_retrying_the_same_target(one, two, claude, start_gateway):
    gw = start_gateway(config(one, two, claude, FIRST_THEN_SECOND, retry={"attempts": 3}))
    client = gw.router_client()
    one.fail(Fault.quota(), Fault.quota(), Fault.quota())
    raw = client.chat.completions.with_raw_response.create(model="smart", messages=HI,
                                                            extra_headers={"x-request-id": "fo-quota"})
    assert raw.parse().choices[0].message.content == "echo: hi"
    assert raw.headers["x-portcullis-served-by"] == "two:gpt-test"
    assert len(one.chats()) == 1, "a target whose quota is gone is not asked again"
    assert attempts(audit_for(gw, "fo-quota")) == [("one:gpt-test", "quota_exhausted"), ("two:gpt-test", "served")]


def test_retry_after_is_honoured_or_skipped_when_too_long(one, two, claude, start_gateway):
    gw = start_gateway(config(one, two, claude, FIRST_THEN_SECOND, retry={"attempts": 3}))
    client = gw.router_client()
    # A short retry-after: the same target again, after the wait.
    one.heal()
    one.fail(Fault.status(429, retry_after="1"))
    began = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(model="smart", messages=HI)
    took = time.monotonic() - began
    assert raw.headers["x-portcullis-served-by"] == "one:gpt-test"
    assert len(one.chats()) == 2 and len(two.chats()) == 0
    assert took >= 0.9, took
    # A retry-after longer than the request may take: straight to the next target.
    one.fail(Fault.status(429, retry_after="3600"))
    began = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(model="smart", messages=HI)
    assert raw.headers["x-portcullis-served-by"] == "two:gpt-test"
    assert time.monotonic() - began < 5
    # Without retry-after: the next target.
    one.fail(Fault.status(429))
    raw = client.chat.completions.with_raw_response.create(model="smart", messages=HI)
    assert raw.headers["x-portcullis-served-by"] == "two:gpt-test"
    # A bad request fails at once, in OpenAI's shape, and is not sent anywhere else.
    before = len(two.chats())
    one.fail(Fault.status(400, code_name="invalid_request_error"))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smart", messages=HI)
    assert len(two.chats()) == before


@pytest.mark.parametrize("stream", [False, True])
def test_a_hang_past_first_byte_timeout_moves_on(stream, one, two, claude, start_gateway):
    gw = start_gateway(config(one, two, claude, FIRST_THEN_SECOND, retry={"firstByteTimeout": "1s"}))
    client = gw.router_client()
    one.fail(Fault.hang_stream(4) if stream else Fault.hang(4))
    began = time.monotonic()
    if stream:
        chunks = list(client.chat.completions.create(model="smart", messages=HI, stream=True,
                                                     extra_headers={"x-request-id": "fo-hang"}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        r = client.chat.completions.create(model="smart", messages=HI, extra_headers={"x-request-id": "fo-hang"})
        text = r.choices[0].message.content
    took = time.monotonic() - began
    assert text == "echo: hi"
    assert 0.9 <= took < 3.5, took
    assert len(two.chats()) == 1
    assert attempts(audit_for(gw, "fo-hang")) == [("one:gpt-test", "timeout"), ("two:gpt-test", "served")]


def test_a_failure_after_the_first_streamed_event_ends_the_stream_and_is_not_retried(one, two, claude,
                                                                                     start_gateway):
    gw = start_gateway(config(one, two, claude, FIRST_THEN_SECOND))
    client = gw.router_client()
    one.fail(Fault.break_after_first())
    got = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in client.chat.completions.create(model="smart", messages=HI, stream=True):
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(got) == "partial"
    assert "broke off" in str(raised.value)
    assert len(two.chats()) == 0, "nothing is retried once the first event reached the client"


def test_fallback_from_openai_to_anthropic_translates_tool_calls(one, two, claude, start_gateway):
    models = [{"name": "smart", "targets": [{"model": "one:gpt-test"}], "fallbacks": ["anthropic:claude-test"],
               "retry": {"attempts": 1}}]
    gw = start_gateway(config(one, two, claude, models))
    client = gw.router_client()
    one.fail(Fault.status(503))
    claude.queue(Reply(tool_calls=[("get_weather", {"city": "Paris"})]))
    raw = client.chat.completions.with_raw_response.create(model="smart", messages=HI, tools=[WEATHER_TOOL])
    r = raw.parse()
    assert raw.headers["x-portcullis-served-by"] == "anthropic:claude-test"
    assert r.model == "smart"
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    sent = [q for q in claude.all_requests() if q.path == "/v1/messages"][-1]
    assert sent.json["model"] == "claude-test" and sent.json["tools"][0]["name"] == "get_weather"
    assert sent.header("x-api-key") == PROVIDER_KEY

    # Streamed too.
    one.fail(Fault.status(500))
    claude.queue(Reply(tool_calls=[("get_weather", {"city": "Rome"})]))
    args, names = "", set()
    for chunk in client.chat.completions.create(model="smart", messages=HI, tools=[WEATHER_TOOL], stream=True):
        assert chunk.model == "smart"
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                names.add(tc.function.name) if tc.function and tc.function.name else None
                args += (tc.function.arguments or "") if tc.function else ""
    assert names == {"get_weather"} and json.loads(args) == {"city": "Rome"}


def test_weights_three_to_one_over_400_requests(one, two, claude, start_gateway):
    models = [{"name": "smart", "targets": [{"model": "one:gpt-test", "weight": 3},
                                            {"model": "two:gpt-test", "weight": 1}]}]
    gw = start_gateway(config(one, two, claude, models))
    client = gw.router_client()
    for _ in range(400):
        client.chat.completions.create(model="smart", messages=HI)
    a, b = len(one.chats()), len(two.chats())
    assert a + b == 400
    assert 0.70 <= a / 400 <= 0.80, (a, b)


def test_an_ejected_target_gets_no_traffic_and_is_tried_again_after(one, two, claude, start_gateway):
    # Different weights, so latency (which soon avoids a failing target) does not decide.
    models = [{"name": "smart", "targets": [{"model": "one:gpt-test", "weight": 3},
                                            {"model": "two:gpt-test", "weight": 1}]}]
    gw = start_gateway(config(one, two, claude, models, retry={"attempts": 2}))
    client = gw.router_client()
    one.fail(*[Fault.status(500)] * 50)
    for _ in range(30):
        if len(one.chats()) >= 3:
            break
        assert client.chat.completions.create(model="smart", messages=HI).choices[0].message.content == "echo: hi"
    assert len(one.chats()) == 3
    ejected_at = time.monotonic()  # the third failure in a row ejects it (for 5 s)
    seen = len(one.chats())
    while time.monotonic() - ejected_at < 4:
        client.chat.completions.create(model="smart", messages=HI)
    assert len(one.chats()) == seen, "no request reached the ejected target during its ejection"
    one.heal()
    time.sleep(max(0.0, ejected_at + 5.3 - time.monotonic()))
    for _ in range(40):
        client.chat.completions.create(model="smart", messages=HI)
        if len(one.chats()) > seen:
            break
    assert len(one.chats()) > seen, "after its ejection the target is tried again"
    assert one.chats()[-1].json["model"] == "gpt-test"


def test_a_pool_of_two_azure_providers_fails_over_on_the_native_route(one, two, start_gateway):
    def azure(name: str, fake: FailingOpenAI) -> str:
        return (f"apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {{name: {name}, namespace: ai}}\n"
                f"spec: {{type: azure, baseUrl: 'http://127.0.0.1:{fake.port}', azure: {{apiVersion: '2024-10-21'}},"
                f" auth: {{apiKey: {{secretRef: {{name: openai-key}}}}}}, models: {{static: [gpt-test]}}}}\n")
    pool = [{"providerRef": {"name": "az-east"}, "prefix": "azure"},
            {"providerRef": {"name": "az-west"}, "prefix": "azure"}]
    gw = start_gateway(docs(secret_doc("openai-key", PROVIDER_KEY), azure("az-east", one), azure("az-west", two),
                            proxy([], providers=pool)))
    client = openai.AzureOpenAI(azure_endpoint=f"{gw.url}/v1/azure/ai.team-a", api_key=CLIENT_KEY,
                                api_version="2024-10-21", max_retries=0, timeout=15)
    one.fail(*[Fault.status(500)] * 50)
    served_by = set()
    for _ in range(20):
        raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=HI)
        assert raw.parse().choices[0].message.content == "echo: hi"
        served_by.add(raw.headers["x-portcullis-served-by"])
        if one.chats():
            break
    assert one.chats(), "the first member was tried"
    assert served_by == {"azure@az-west"}, served_by
    for fake in (one, two):
        for req in fake.chats():
            assert req.path == "/openai/deployments/gpt-test/chat/completions"
            assert req.header("api-key") == PROVIDER_KEY and req.header("authorization") is None
    # Streamed on the native route, and the Model Router lists the pool's model once.
    one.fail(Fault.status(500))
    text = "".join(c.choices[0].delta.content or "" for c in
                   client.chat.completions.create(model="gpt-test", messages=HI, stream=True) if c.choices)
    assert text == "echo: hi"
    ids = [m.id for m in gw.router_client().models.list().data]
    assert ids.count("azure:gpt-test") == 1


def test_models_lists_virtual_models_and_default_model_may_be_virtual(one, two, claude, start_gateway):
    text = config(one, two, claude, FIRST_THEN_SECOND)
    text = text.replace('"models": [', '"defaultModel": "smart", "models": [')
    gw = start_gateway(text)
    client = gw.router_client()
    ids = [m.id for m in client.models.list().data]
    assert "smart" in ids and "one:gpt-test" in ids
    # No model in the request: the virtual default serves it.
    r = gw.raw("POST", "/v1/model-router/ai.team-a/chat/completions", {"messages": HI})
    assert r.status == 200, r.text
    assert r.json()["model"] == "smart" and r.headers["x-portcullis-served-by"] == "one:gpt-test"
