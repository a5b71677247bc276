"""The OpenAI Responses API on the Model Router (`POST …/responses`), driven by the official
`openai` SDK (`client.responses.create` and `client.responses.stream`) against fakes of every
format: OpenAI, Anthropic, Gemini, Bedrock (SigV4) and Cohere. Text, a function-tool round trip,
usage, the stateless refusal of `previous_response_id`, what Codex sends, and guardrails."""

from __future__ import annotations

import json

import openai
import pytest

from router_api_fixtures import (CHAT_MODELS, FORMATS, WEATHER, audit_for, five_config,  # noqa: F401
                                 aws_env, control, fakes5, generation_bodies, gw5, irsa, openai_fake,
                                 queue_call, queue_text, runtime, store, sts, usage_of)
from translated_fixtures import anthropic_fake, cohere_fake, gemini_fake  # noqa: F401


TOOL = {"type": "function", **WEATHER}
QUESTION = "Weather in Paris?"
INSTRUCTIONS = "You are a weather bot."

# The Bedrock fake listens on 127.0.0.1: trusted like an operator's private endpoint.
pytestmark = pytest.mark.usefixtures("trust_loopback_identity")


def model_of(provider: str) -> str:
    return f"{provider}:{CHAT_MODELS[provider]}"


def assert_tool_result_reached(provider: str, body: dict, result: str, forwarded: bool = True) -> None:
    """The second upstream request carries the call and its result in the provider's own form
    (`forwarded`: an OpenAI target got the Responses request itself)."""
    text = json.dumps(body)
    assert result in text, body
    assert "get_weather" in text, body
    if provider == "anthropic":
        assert [b["type"] for b in body["messages"][-1]["content"]] == ["tool_result"], body
        assert any(b["type"] == "tool_use" for b in body["messages"][-2]["content"]), body
        assert "You are a weather bot." in json.dumps(body["system"])
    elif provider == "gemini":
        assert "functionResponse" in json.dumps(body["contents"][-1]), body
        assert "functionCall" in json.dumps(body["contents"][-2]), body
    elif provider == "bedrock":
        assert "toolResult" in json.dumps(body["messages"][-1]), body
        assert "toolUse" in json.dumps(body["messages"][-2]), body
    elif provider == "openai" and forwarded:  # forwarded as a Responses request
        assert body["input"][-1]["type"] == "function_call_output", body
        assert body["input"][-2]["type"] == "function_call", body
        assert body["store"] is False and body["model"] == CHAT_MODELS["openai"]
    else:  # cohere, and openai through the chat path: chat-shaped
        assert body["messages"][-1]["role"] == "tool", body
        assert body["messages"][-2]["tool_calls"][0]["function"]["name"] == "get_weather", body


@pytest.mark.parametrize("provider", FORMATS)
def test_create_text_and_function_tool_round_trip(provider, fakes5, gw5):
    queue_call(fakes5, provider, "get_weather", {"city": "Paris"})
    queue_text(fakes5, provider, "Sunny in Paris.")
    client = gw5.router_client()
    model = model_of(provider)

    first = client.responses.create(model=model, instructions=INSTRUCTIONS, input=QUESTION, tools=[TOOL])
    assert first.object == "response" and first.status == "completed"
    assert first.model == model
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1, first.output
    call = calls[0]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id
    assert (first.usage.input_tokens, first.usage.output_tokens) == usage_of(provider, 31, 12)
    assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens

    history = [{"role": "user", "content": QUESTION},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "18C and sunny"}]
    second = client.responses.create(model=model, instructions=INSTRUCTIONS, input=history, tools=[TOOL])
    assert second.output_text == "Sunny in Paris."
    assert [o.type for o in second.output] == ["message"]
    assert (second.usage.input_tokens, second.usage.output_tokens) == usage_of(provider, 57, 8)

    bodies = generation_bodies(fakes5, provider)
    assert len(bodies) == 2, bodies
    assert_tool_result_reached(provider, bodies[1], "18C and sunny")


def fold(stream) -> dict:
    out: dict = {"types": [], "text": "", "args": {}}
    for event in stream:
        out["types"].append(event.type)
        if event.type == "response.output_text.delta":
            out["text"] += event.delta
        if event.type == "response.function_call_arguments.delta":
            out["args"][event.output_index] = out["args"].get(event.output_index, "") + event.delta
    out["final"] = stream.get_final_response()
    return out


@pytest.mark.parametrize("provider", FORMATS)
def test_stream_text_and_function_tool_round_trip(provider, fakes5, gw5):
    queue_call(fakes5, provider, "get_weather", {"city": "Paris"})
    queue_text(fakes5, provider, "Sunny in Paris, all day long.")
    client = gw5.router_client()
    model = model_of(provider)

    with client.responses.stream(model=model, instructions=INSTRUCTIONS, input=QUESTION, tools=[TOOL]) as s:
        first = fold(s)
    assert first["types"][0] == "response.created"
    assert first["types"][-1] == "response.completed"
    assert "response.output_item.added" in first["types"]
    assert "response.function_call_arguments.delta" in first["types"]
    final = first["final"]
    calls = [o for o in final.output if o.type == "function_call"]
    assert len(calls) == 1, final.output
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert json.loads("".join(first["args"].values())) == {"city": "Paris"}
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == usage_of(provider, 31, 12)

    call = calls[0]
    history = [{"role": "user", "content": QUESTION},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "18C and sunny"}]
    with client.responses.stream(model=model, instructions=INSTRUCTIONS, input=history, tools=[TOOL]) as s:
        second = fold(s)
    assert second["text"] == "Sunny in Paris, all day long."
    assert second["final"].output_text == "Sunny in Paris, all day long."
    assert "response.output_text.delta" in second["types"]
    assert second["final"].status == "completed"

    bodies = generation_bodies(fakes5, provider)
    assert len(bodies) == 2
    assert_tool_result_reached(provider, bodies[1], "18C and sunny")


def test_previous_response_id_is_a_400_that_says_the_router_is_stateless(fakes5, gw5):
    client = gw5.router_client()
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=model_of("anthropic"), input="again", previous_response_id="resp_abc")
    assert "stateless" in str(e.value) and "previous_response_id" in str(e.value)
    assert e.value.body["param"] == "previous_response_id"
    assert not generation_bodies(fakes5, "anthropic"), "nothing may go upstream"


def test_what_codex_sends_is_accepted_and_hosted_tools_are_refused_by_name(fakes5, gw5):
    client = gw5.router_client()
    queue_text(fakes5, "anthropic", "Done.")
    with client.responses.stream(
        model=model_of("anthropic"), instructions="You are Codex.", store=False,
        include=["reasoning.encrypted_content"], prompt_cache_key="session-1",
        extra_body={"client_metadata": {"x-codex": "1"}},
        input=[{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be careful"}]},
               {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
               {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"}],
        tools=[TOOL], parallel_tool_calls=False,
    ) as s:
        final = s.get_final_response()
    assert final.output_text == "Done."
    body = generation_bodies(fakes5, "anthropic")[-1]
    for field in ("include", "prompt_cache_key", "client_metadata", "store"):
        assert field not in body, body
    assert "be careful" in json.dumps(body["system"]) and "You are Codex." in json.dumps(body["system"])

    # A reasoning item cannot go to another provider: dropped, and counted.
    raw = gw5.raw("POST", "/v1/model-router/ai.team-a/responses",
                  {"model": model_of("anthropic"), "store": False,
                   "include": ["reasoning.encrypted_content"],
                   "input": [{"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},
                             {"role": "user", "content": "hi"}]},
                  headers={"content-type": "application/json"})
    assert raw.status == 200, raw.text
    headers = {k.lower(): v for k, v in raw.headers.items()}
    assert headers.get("x-portcullis-dropped-parts") == "1", headers
    assert raw.json()["output"][0]["content"][0]["text"].startswith("echo: hi")

    # A hosted tool cannot run on a translated target: 400 naming it.
    for kind in ("web_search", "namespace"):
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model=model_of("gemini"), input="x", tools=[{"type": kind, "name": "n"}])
        assert kind in str(e.value)


def test_openai_targets_get_the_responses_request_forwarded(fakes5, gw5):
    """OpenAI speaks Responses: the body goes on as it is (hosted tools, reasoning items and
    `include` included), `store` forced off, `model` rewritten there and back."""
    client = gw5.router_client()
    fake = fakes5["openai"]
    res = client.responses.create(
        model=model_of("openai"), input=[{"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},
                                         {"role": "user", "content": "news?"}],
        tools=[{"type": "web_search"}], include=["reasoning.encrypted_content"], store=True)
    assert res.model == model_of("openai") and res.output_text == "echo: news?"
    sent = [r for r in fake.all_requests() if r.path == "/v1/responses"][-1].json
    assert sent["model"] == CHAT_MODELS["openai"] and sent["store"] is False
    assert sent["tools"] == [{"type": "web_search"}] and sent["include"] == ["reasoning.encrypted_content"]
    assert sent["input"][0]["type"] == "reasoning"
    assert not [r for r in fake.all_requests() if r.path == "/v1/chat/completions"]
    with client.responses.stream(model=model_of("openai"), input="hi") as s:
        final = s.get_final_response()
    assert final.model == model_of("openai") and final.output_text == "echo: hi"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_guarded_proxy_blocks_a_tool_call_through_responses(provider, stream, fakes5, start_gateway):
    tools = {"policies": [{"name": "no-delete", "tools": ["delete_*"], "action": "block"}]}
    gw = start_gateway(five_config(fakes5, tools=tools))
    queue_call(fakes5, provider, "delete_file", {"path": "/etc/passwd"})
    client = gw.router_client()
    delete = {"type": "function", "name": "delete_file", "description": "Delete a file",
              "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}
    rid = f"rid-resp-{provider}-{stream}"
    if stream:
        with client.responses.stream(model=model_of(provider), input="clean up", tools=[delete],
                                     extra_headers={"x-request-id": rid}) as s:
            final = s.get_final_response()
    else:
        final = client.responses.create(model=model_of(provider), input="clean up", tools=[delete],
                                        extra_headers={"x-request-id": rid})
    assert [o.type for o in final.output] == ["message"], final.output
    assert "delete_file" in final.output_text and "blocked" in final.output_text
    assert "/etc/passwd" not in final.model_dump_json()
    line = audit_for(gw, rid)
    assert line["endpoint"] == "responses", line
    assert [(d["tool"], d["action"], d["rule"]) for d in line["decisions"]] == \
        [("delete_file", "block", "no-delete")], line


def test_errors_are_in_openai_shape(fakes5, gw5):
    client = gw5.router_client()
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="nosuch:model", input="x")
    assert e.value.body["code"] == "model_not_found"
