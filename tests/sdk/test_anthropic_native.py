"""Native Anthropic route (`/v1/anthropic/{proxy}`) driven by the official `anthropic` SDK."""

from __future__ import annotations

import anthropic
import pytest

from fakes.anthropic_upstream import anthropic_error
from fakes.base import Reply
from harness import CLIENT_KEY, PROVIDER_KEY
from translated_fixtures import (anthropic_fake, assert_provider_auth, cohere_fake, fakes3, gemini_fake,  # noqa: F401
                                 gw3, only)

MODEL = "claude-sonnet-4-6"
TOOL = {"name": "get_weather", "description": "Weather in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def client(gw, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=CLIENT_KEY, base_url=gw.native_base(prefix="anthropic"), max_retries=0,
                               timeout=15, **kw)


def test_messages_create(anthropic_fake, gw3):
    anthropic_fake.queue(Reply(text="Hello from Claude.", input_tokens=12, output_tokens=5, cached_tokens=3))
    msg = client(gw3).messages.create(model=MODEL, max_tokens=64, system="Be brief.",
                                      messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].type == "text" and msg.content[0].text == "Hello from Claude."
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens, msg.usage.cache_read_input_tokens) == (12, 5, 3)

    up = only(anthropic_fake.requests_to("/v1/messages", "POST"))
    assert_provider_auth("anthropic", up)
    sdk_version = client(gw3).default_headers.get("anthropic-version")
    assert sdk_version and up.header("anthropic-version") == sdk_version, "the SDK's anthropic-version must be kept"
    assert up.json["system"] == "Be brief." and up.json["max_tokens"] == 64
    assert up.json["messages"] == [{"role": "user", "content": "hi"}], "the native body passes through unchanged"


def test_anthropic_beta_and_version_are_kept(anthropic_fake, gw3):
    c = client(gw3, default_headers={"anthropic-version": "2023-01-01"})
    c.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}],
                      extra_headers={"anthropic-beta": "prompt-caching-2024-07-31,token-efficient-tools-2025-02-19"})
    up = only(anthropic_fake.requests_to("/v1/messages", "POST"))
    assert up.header("anthropic-version") == "2023-01-01"
    assert up.header("anthropic-beta") == "prompt-caching-2024-07-31,token-efficient-tools-2025-02-19"
    assert_provider_auth("anthropic", up)


def test_old_style_x_api_key_and_missing_version(anthropic_fake, gw3):
    """Older clients send their key as x-api-key and some send no anthropic-version at all."""
    r = gw3.raw("POST", "/v1/anthropic/ai.team-a/v1/messages",
                {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]},
                headers={"x-api-key": CLIENT_KEY, "Authorization": ""})
    assert r.status == 200, r.text
    up = only(anthropic_fake.requests_to("/v1/messages", "POST"))
    assert up.header("x-api-key") == PROVIDER_KEY
    assert up.header("anthropic-version") == "2023-06-01", "a default anthropic-version is sent when absent"
    assert_provider_auth("anthropic", up)


def test_messages_stream_text_and_tool_use(anthropic_fake, gw3):
    anthropic_fake.queue(Reply(text="Let me check.", tool_calls=[("get_weather", {"city": "Oslo"})],
                               input_tokens=30, output_tokens=14))
    c = client(gw3)
    with c.messages.stream(model=MODEL, max_tokens=128, tools=[TOOL],
                           messages=[{"role": "user", "content": "Weather in Oslo?"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Let me check."
    assert final.stop_reason == "tool_use"
    tool = [b for b in final.content if b.type == "tool_use"]
    assert len(tool) == 1 and tool[0].name == "get_weather" and tool[0].input == {"city": "Oslo"}
    assert (final.usage.input_tokens, final.usage.output_tokens) == (30, 14)

    # Second turn with the tool result, not streamed.
    msg = c.messages.create(model=MODEL, max_tokens=128, tools=[TOOL], messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool[0].id, "content": "-3C snow"}]},
    ])
    assert msg.content[0].text == "echo: -3C snow"
    reqs = anthropic_fake.requests_to("/v1/messages", "POST")
    assert len(reqs) == 2 and reqs[0].json["stream"] is True
    for r in reqs:
        assert_provider_auth("anthropic", r)


def test_count_tokens_and_models_list(anthropic_fake, gw3):
    c = client(gw3)
    count = c.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "one two three"}])
    assert count.input_tokens > 0
    up = only(anthropic_fake.requests_to("/v1/messages/count_tokens", "POST"))
    assert_provider_auth("anthropic", up)

    anthropic_fake.page_cap = 2
    ids = [m.id for m in c.models.list(limit=2)]  # the SDK follows has_more / last_id itself
    assert ids == anthropic_fake.models
    pages = anthropic_fake.requests_to("/v1/models", "GET")
    assert len(pages) == 3 and pages[1].query.get("after_id") == [anthropic_fake.models[1]]
    for p in pages:
        assert_provider_auth("anthropic", p)


def test_errors_in_anthropic_shape(anthropic_fake, gw3):
    c = client(gw3)
    # Upstream errors pass through unchanged.
    anthropic_fake.script(429, anthropic_error("rate_limit_error", "Number of request tokens has exceeded your "
                                                                   "per-minute rate limit"), {"retry-after": "30"})
    with pytest.raises(anthropic.RateLimitError) as info:
        c.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert info.value.response.headers.get("retry-after") == "30"
    assert info.value.body["error"]["type"] == "rate_limit_error"
    anthropic_fake.script(529, anthropic_error("overloaded_error", "Overloaded"))
    with pytest.raises(anthropic.APIStatusError) as info:
        c.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 529 and info.value.body["error"]["type"] == "overloaded_error"
    # What the real API refuses, the fake refuses, and the SDK sees Anthropic's error.
    with pytest.raises(anthropic.BadRequestError) as info:
        c.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "system", "content": "x"}])  # type: ignore
    assert "system" in info.value.body["error"]["message"]
    # Errors the gateway raises itself come in Anthropic's shape too.
    other = anthropic.Anthropic(api_key=CLIENT_KEY, base_url=gw3.native_base("ai.nope", "anthropic"),
                                max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as info:
        other.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "not_found_error"
