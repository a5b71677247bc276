"""Native Cohere route (`/v1/cohere/{proxy}`) driven by the official `cohere` SDK (`ClientV2`)."""

from __future__ import annotations

import json

import cohere
import pytest

from fakes.base import Reply
from fakes.cohere_upstream import cohere_error
from harness import CLIENT_KEY
from translated_fixtures import (anthropic_fake, assert_provider_auth, cohere_fake, fakes3, gemini_fake,  # noqa: F401
                                 gw3, only)

MODEL = "command-a-03-2025"
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def client(gw, proxy: str = "ai.team-a") -> cohere.ClientV2:
    return cohere.ClientV2(api_key=CLIENT_KEY, base_url=gw.native_base(proxy, "cohere"), timeout=15)


def test_chat(cohere_fake, gw3):
    cohere_fake.queue(Reply(text="Hello from Command.", input_tokens=14, output_tokens=5))
    r = client(gw3).chat(model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": "hi"}])
    assert r.message.content[0].text == "Hello from Command."
    assert r.finish_reason == "COMPLETE"
    assert (r.usage.tokens.input_tokens, r.usage.tokens.output_tokens) == (14, 5)
    up = only(cohere_fake.requests_to("/v2/chat", "POST"))
    assert_provider_auth("cohere", up)
    assert up.json["model"] == MODEL and up.json["messages"][0] == {"role": "system", "content": "Be brief."}


def test_chat_stream(cohere_fake, gw3):
    cohere_fake.queue(Reply(text="Streaming from Command now.", input_tokens=8, output_tokens=6))
    events = list(client(gw3).chat_stream(model=MODEL, messages=[{"role": "user", "content": "stream"}]))
    types_ = [e.type for e in events]
    assert types_[0] == "message-start" and types_[-1] == "message-end", types_
    text = "".join(e.delta.message.content.text for e in events if e.type == "content-delta")
    assert text == "Streaming from Command now."
    end = events[-1]
    assert end.delta.finish_reason == "COMPLETE" and end.delta.usage.tokens.output_tokens == 6
    up = only(cohere_fake.requests_to("/v2/chat", "POST"))
    assert up.json["stream"] is True
    assert_provider_auth("cohere", up)


def test_tool_call_round_trip_streaming(cohere_fake, gw3):
    cohere_fake.queue(Reply(tool_calls=[("get_weather", {"city": "Accra"})]))
    c = client(gw3)
    events = list(c.chat_stream(model=MODEL, tools=[TOOL], messages=[{"role": "user", "content": "Accra?"}]))
    start = [e for e in events if e.type == "tool-call-start"]
    assert len(start) == 1
    call = start[0].delta.message.tool_calls
    args = "".join(e.delta.message.tool_calls.function.arguments for e in events if e.type == "tool-call-delta")
    assert call.function.name == "get_weather" and json.loads(args) == {"city": "Accra"}
    assert events[-1].delta.finish_reason == "TOOL_CALL"
    r = c.chat(model=MODEL, tools=[TOOL], messages=[
        {"role": "user", "content": "Accra?"},
        {"role": "assistant", "tool_plan": "I will check.", "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": args}}]},
        {"role": "tool", "tool_call_id": call.id, "content": [{"type": "document", "document": {"data": "31C"}}]},
    ])
    assert "31C" in r.message.content[0].text
    for up in cohere_fake.requests_to("/v2/chat", "POST"):
        assert_provider_auth("cohere", up)


def test_models_list(cohere_fake, gw3):
    models = client(gw3).models.list(endpoint="chat")
    assert [m.name for m in models.models] == [n for n, eps in cohere_fake.models if "chat" in eps]
    up = only(cohere_fake.requests_to("/v1/models", "GET"))
    assert up.query.get("endpoint") == ["chat"]
    assert_provider_auth("cohere", up)


def test_errors_in_cohere_shape(cohere_fake, gw3):
    c = client(gw3)
    cohere_fake.script(429, cohere_error("You are using a Trial key, which is limited to 10 API calls / minute."),
                       {"retry-after": "60"})
    with pytest.raises(cohere.errors.TooManyRequestsError) as info:
        c.chat(model=MODEL, messages=[{"role": "user", "content": "x"}], request_options={"max_retries": 0})
    assert info.value.headers.get("retry-after") == "60"
    assert "Trial key" in str(info.value.body)
    with pytest.raises(cohere.errors.BadRequestError) as info:
        c.chat(model=MODEL, messages=[{"role": "robot", "content": "x"}])  # type: ignore[list-item]
    assert "role" in str(info.value.body)
    nope = client(gw3, proxy="ai.nope")
    with pytest.raises(cohere.errors.NotFoundError) as info:
        nope.chat(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert isinstance(info.value.body, dict) and info.value.body.get("message"), info.value.body
