"""The Anthropic Messages API on the Model Router, driven by the official `anthropic` SDK with
its base URL at `…/v1/model-router/{proxy}`: `messages.create` and `messages.stream` to
OpenAI, Gemini, Bedrock (SigV4), Anthropic and Cohere models with a tool round trip;
`count_tokens`; `…/messages` as the same endpoint; errors in Anthropic's shape; what Claude
Code sends; guardrails."""

from __future__ import annotations

import json

import anthropic
import pytest

from harness import CLIENT_KEY
from router_api_fixtures import (CHAT_MODELS, FORMATS, WEATHER, audit_for, five_config,  # noqa: F401
                                 aws_env, control, fakes5, generation_bodies, gw5, irsa, openai_fake,
                                 queue_call, queue_text, runtime, store, sts, usage_of)
from test_router_responses import assert_tool_result_reached
from translated_fixtures import anthropic_fake, cohere_fake, gemini_fake  # noqa: F401


TOOL = {"name": WEATHER["name"], "description": WEATHER["description"], "input_schema": WEATHER["parameters"]}
SYSTEM = "You are a weather bot."
QUESTION = [{"role": "user", "content": "Weather in Paris?"}]


def client_for(gw, proxy: str = "ai.team-a") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{gw.url}/v1/model-router/{proxy}", api_key=CLIENT_KEY, max_retries=0,
                               timeout=15)

# The Bedrock fake listens on 127.0.0.1: trusted like an operator's private endpoint.
pytestmark = pytest.mark.usefixtures("trust_loopback_identity")


def model_of(provider: str) -> str:
    return f"{provider}:{CHAT_MODELS[provider]}"


@pytest.mark.parametrize("provider", FORMATS)
def test_create_with_a_tool_round_trip(provider, fakes5, gw5):
    queue_call(fakes5, provider, "get_weather", {"city": "Paris"})
    queue_text(fakes5, provider, "Sunny in Paris.")
    client = client_for(gw5)
    model = model_of(provider)

    first = client.messages.create(model=model, max_tokens=1024, system=SYSTEM, messages=QUESTION, tools=[TOOL])
    assert first.type == "message" and first.role == "assistant" and first.model == model
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].input == {"city": "Paris"}
    inp, out = usage_of(provider, 31, 12)
    assert first.usage.output_tokens == out
    assert first.usage.input_tokens + (first.usage.cache_read_input_tokens or 0) == inp

    history = QUESTION + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "18C and sunny"}]},
    ]
    second = client.messages.create(model=model, max_tokens=1024, system=SYSTEM, messages=history, tools=[TOOL])
    assert [b.type for b in second.content] == ["text"]
    assert second.content[0].text == "Sunny in Paris."
    assert second.stop_reason == "end_turn"

    bodies = generation_bodies(fakes5, provider)
    assert len(bodies) == 2, bodies
    assert_tool_result_reached(provider, bodies[1], "18C and sunny", forwarded=False)
    if provider == "anthropic":
        assert bodies[0]["max_tokens"] == 1024 and bodies[0]["system"]


@pytest.mark.parametrize("provider", FORMATS)
def test_stream_with_a_tool_round_trip(provider, fakes5, gw5):
    queue_call(fakes5, provider, "get_weather", {"city": "Paris"})
    queue_text(fakes5, provider, "Sunny in Paris, all day long.")
    client = client_for(gw5)
    model = model_of(provider)

    with client.messages.stream(model=model, max_tokens=1024, system=SYSTEM, messages=QUESTION,
                                tools=[TOOL]) as s:
        kinds = [event.type for event in s]
        first = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    assert "content_block_start" in kinds and "message_delta" in kinds
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].input == {"city": "Paris"}, first.content
    inp, out = usage_of(provider, 31, 12)
    assert first.usage.output_tokens == out
    assert first.usage.input_tokens + (first.usage.cache_read_input_tokens or 0) == inp

    history = QUESTION + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "18C and sunny"}]},
    ]
    with client.messages.stream(model=model, max_tokens=1024, system=SYSTEM, messages=history,
                                tools=[TOOL]) as s:
        text = "".join(s.text_stream)
        second = s.get_final_message()
    assert text == "Sunny in Paris, all day long."
    assert second.stop_reason == "end_turn"

    bodies = generation_bodies(fakes5, provider)
    assert len(bodies) == 2
    assert_tool_result_reached(provider, bodies[1], "18C and sunny", forwarded=False)


def test_messages_without_v1_is_the_same_endpoint_and_count_tokens(fakes5, gw5):
    body = {"model": model_of("gemini"), "max_tokens": 50, "messages": [{"role": "user", "content": "hello there"}]}
    a = gw5.raw("POST", "/v1/model-router/ai.team-a/messages", body, headers={"content-type": "application/json"})
    assert a.status == 200, a.text
    assert a.json()["type"] == "message" and a.json()["content"][0]["text"] == "echo: hello there"

    client = client_for(gw5)
    counted = client.messages.count_tokens(model=model_of("gemini"), messages=body["messages"], system=SYSTEM)
    assert counted.input_tokens > 0
    longer = client.messages.count_tokens(model=model_of("gemini"), system=SYSTEM * 20,
                                          messages=body["messages"])
    assert longer.input_tokens > counted.input_tokens
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="nosuch:model", messages=body["messages"])


def test_anthropic_targets_get_the_messages_request_forwarded(fakes5, gw5):
    """Anthropic speaks Messages: thinking, cache control, betas and server tools reach it as
    sent; `model` is rewritten there and back (stream events included); count_tokens is real."""
    fake = fakes5["anthropic"]
    client = client_for(gw5)
    model = model_of("anthropic")
    with client.beta.messages.stream(
        model=model, max_tokens=2000, betas=["interleaved-thinking-2025-05-14"],
        thinking={"type": "enabled", "budget_tokens": 1024},
        system=[{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "hello"}],
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "echo: hello" and final.model == model
    req = [r for r in fake.all_requests() if r.path == "/v1/messages"][-1]
    assert req.json["model"] == CHAT_MODELS["anthropic"]
    assert req.json["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert req.json["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert req.header("anthropic-beta") == "interleaved-thinking-2025-05-14"
    assert req.header("x-api-key") != CLIENT_KEY and "beta" not in req.target
    counted = client.messages.count_tokens(model=model, messages=[{"role": "user", "content": "one two three"}])
    counts = [r for r in fake.all_requests() if r.path == "/v1/messages/count_tokens"]
    assert len(counts) == 1 and counts[0].json["model"] == CHAT_MODELS["anthropic"]
    assert counted.input_tokens > 3  # the fake's own count, not the router's estimate


def test_errors_are_in_anthropic_shape(fakes5, gw5):
    client = client_for(gw5)
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="nosuch:model", max_tokens=10, messages=QUESTION)
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=model_of("openai"), max_tokens=10, messages=QUESTION,
                               tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert "web_search_20250305" in e.value.body["error"]["message"]
    # An upstream error comes back in Anthropic's shape too.
    fakes5["gemini"].script(status=429, body={"error": {"code": 429, "message": "Resource exhausted",
                                                        "status": "RESOURCE_EXHAUSTED"}})
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(model=model_of("gemini"), max_tokens=10, messages=QUESTION)
    assert e.value.body["error"]["type"] == "rate_limit_error"


def test_what_claude_code_sends(fakes5, gw5):
    """`?beta=true`, a long anthropic-beta list, thinking, context_management, output_config,
    32000 max_tokens and a system-role message mid conversation: dropped where the target cannot
    honour them, and the thinking block counted."""
    queue_text(fakes5, "openai", "All done.")
    client = client_for(gw5)
    with client.beta.messages.stream(
        model=model_of("openai"), max_tokens=32000,
        betas=["claude-code-20250219", "interleaved-thinking-2025-05-14", "context-management-2025-06-27"],
        system=[{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        thinking={"type": "enabled", "budget_tokens": 4000},
        extra_body={"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
                    "output_config": {"effort": "medium"}},
        messages=[{"role": "user", "content": "list files"},
                  {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                                                    {"type": "text", "text": "Looking."}]},
                  {"role": "user", "content": [{"type": "text", "text": "go on"}]}],
        tools=[TOOL],
    ) as s:
        text = "".join(s.text_stream)
        response = s.response
    assert text == "All done."
    assert response.headers.get("x-portcullis-dropped-parts") == "1"
    body = generation_bodies(fakes5, "openai")[-1]
    for field in ("thinking", "context_management", "output_config", "betas"):
        assert field not in body, body
    assert body["max_completion_tokens"] == 32000
    assert body["messages"][0] == {"role": "system", "content": "You are Claude Code."}
    assert body["stream"] is True


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("provider", ["openai", "bedrock", "anthropic"])
def test_guarded_proxy_blocks_a_tool_call_through_messages(provider, stream, fakes5, start_gateway):
    tools = {"policies": [{"name": "no-delete", "tools": ["delete_*"], "action": "block"}]}
    gw = start_gateway(five_config(fakes5, tools=tools))
    queue_call(fakes5, provider, "delete_file", {"path": "/etc/passwd"})
    client = client_for(gw)
    delete = {"name": "delete_file", "description": "Delete a file",
              "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}
    rid = f"rid-msg-{provider}-{stream}"
    kw = dict(model=model_of(provider), max_tokens=100, messages=[{"role": "user", "content": "clean up"}],
              tools=[delete], extra_headers={"x-request-id": rid})
    if stream:
        with client.messages.stream(**kw) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(**kw)
    assert [b.type for b in message.content] == ["text"], message.content
    assert "delete_file" in message.content[0].text and "blocked" in message.content[0].text
    assert message.stop_reason == "end_turn"
    assert "/etc/passwd" not in message.model_dump_json()
    line = audit_for(gw, rid)
    assert line["endpoint"] == "messages", line
    assert [(d["tool"], d["action"], d["rule"]) for d in line["decisions"]] == \
        [("delete_file", "block", "no-delete")], line
