"""Model Router → Anthropic, Gemini and Cohere, driven by the official `openai` SDK.

Behind the gateway sit fakes that speak each provider's documented wire format and reject
what the real API rejects, so a translation the provider would refuse fails here.
"""

from __future__ import annotations

import json
import threading

import openai
import pytest

from fakes.base import Reply
from fakes.anthropic_upstream import anthropic_error
from fakes.cohere_upstream import cohere_error
from fakes.gemini_upstream import gemini_error
from harness import PROVIDER_KEY, docs, provider_doc, proxy_doc, secret_doc
from translated_fixtures import (MODELS, PROVIDERS, anthropic_fake, assert_provider_auth, cohere_fake,  # noqa: F401
                                 fakes3, gemini_fake, gw3, three_config)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                       "additionalProperties": False},
    },
}
QUESTION = [
    {"role": "system", "content": "You are a weather bot."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
]


def generation_requests(provider: str, fake) -> list:
    """What the gateway sent to the provider's generation endpoint, in order."""
    def is_gen(r) -> bool:
        if provider == "anthropic":
            return r.path == "/v1/messages"
        if provider == "gemini":
            return r.path.endswith(":generateContent") or r.path.endswith(":streamGenerateContent")
        return r.path == "/v2/chat"
    return [r for r in fake.all_requests() if r.method == "POST" and is_gen(r)]


def assert_native_tool_turn(provider: str, body: dict, call_ids: list[str], results: list[str]) -> None:
    """The second request carries the assistant's tool calls and their results in native form."""
    if provider == "anthropic":
        assert body["system"] in ("You are a weather bot.", [{"type": "text", "text": "You are a weather bot."}])
        assistant, user = body["messages"][-2], body["messages"][-1]
        assert assistant["role"] == "assistant"
        assert [b["id"] for b in assistant["content"] if b["type"] == "tool_use"] == call_ids
        assert user["role"] == "user"
        got = [(b["tool_use_id"], b["content"]) for b in user["content"] if b["type"] == "tool_result"]
        assert [g[0] for g in got] == call_ids, user
        assert [json.dumps(g[1]) for g in got] and all(r in json.dumps(user) for r in results)
        assert body["tools"][0]["name"] == "get_weather"
        assert body["tools"][0]["input_schema"]["properties"]["city"] == {"type": "string"}
    elif provider == "gemini":
        assert "You are a weather bot." in json.dumps(body["systemInstruction"])
        model, user = body["contents"][-2], body["contents"][-1]
        assert model["role"] == "model"
        calls = [p["functionCall"] for p in model["parts"] if "functionCall" in p]
        assert [c["name"] for c in calls] == ["get_weather"] * len(call_ids)
        responses = [p["functionResponse"] for p in user["parts"] if "functionResponse" in p]
        assert [r["name"] for r in responses] == ["get_weather"] * len(call_ids)
        assert all(r in json.dumps(responses) for r in results)
        assert body["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    else:
        assert body["messages"][0] == {"role": "system", "content": "You are a weather bot."}
        assistant = body["messages"][-1 - len(call_ids)]
        assert assistant["role"] == "assistant"
        assert [c["id"] for c in assistant["tool_calls"]] == call_ids
        tools = body["messages"][-len(call_ids):]
        assert [t["role"] for t in tools] == ["tool"] * len(call_ids)
        assert [t["tool_call_id"] for t in tools] == call_ids
        assert all(r in json.dumps(tools) for r in results)
        assert body["tools"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_two_turn_tool_conversation(provider, fakes3, gw3):
    fake = fakes3[provider]
    fake.queue(Reply(tool_calls=[("get_weather", {"city": "Paris"})], input_tokens=31, output_tokens=12),
               Reply(text="Sunny in Paris.", input_tokens=57, output_tokens=8, cached_tokens=0))
    client = gw3.router_client()
    model = f"{provider}:{MODELS[provider]}"

    first = client.chat.completions.create(model=model, messages=QUESTION, tools=[WEATHER_TOOL])
    assert first.model == model
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant"
    calls = choice.message.tool_calls
    assert calls and len(calls) == 1
    assert calls[0].type == "function" and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert calls[0].id
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens, first.usage.total_tokens) == (31, 12, 43)

    history = QUESTION + [choice.message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": calls[0].id, "content": "18C and sunny"}]
    second = client.chat.completions.create(model=model, messages=history, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "Sunny in Paris."
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.tool_calls in (None, [])
    assert (second.usage.prompt_tokens, second.usage.completion_tokens, second.usage.total_tokens) == (57, 8, 65)

    reqs = generation_requests(provider, fake)
    assert len(reqs) == 2, [r.target for r in fake.all_requests()]
    for r in reqs:
        assert_provider_auth(provider, r)
    if provider == "gemini":
        assert reqs[0].path == f"/v1beta/models/{MODELS[provider]}:generateContent"
    else:
        assert reqs[0].json["model"] == MODELS[provider]
        assert not reqs[0].json.get("stream")
    if provider == "anthropic":
        upstream_ids = [f"toolu_fake{1:02d}0"]
        assert calls[0].id == upstream_ids[0], "the tool call ID must be the upstream's, so results map back"
    elif provider == "cohere":
        upstream_ids = ["get_weather_fake010"]
        assert calls[0].id == upstream_ids[0]
    else:
        upstream_ids = [calls[0].id]
    assert_native_tool_turn(provider, reqs[1].json, upstream_ids, ["18C and sunny"])


def collect_stream(stream) -> dict:
    """Fold a chat.completion.chunk stream into text, tool calls (by index), finish reasons, usage."""
    out: dict = {"text": "", "calls": {}, "finish": [], "usage": None, "roles": [], "chunks": 0}
    for chunk in stream:
        out["chunks"] += 1
        if chunk.usage is not None:
            out["usage"] = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                out["roles"].append((out["chunks"], c.delta.role))
            out["text"] += c.delta.content or ""
            for tc in c.delta.tool_calls or []:
                slot = out["calls"].setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    assert slot["id"] in (None, tc.id), "a tool call's id changed mid-stream"
                    slot["id"] = tc.id
                if tc.function and tc.function.name:
                    slot["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    slot["arguments"] += tc.function.arguments
            if c.finish_reason:
                out["finish"].append(c.finish_reason)
    return out


@pytest.mark.parametrize("provider", PROVIDERS)
def test_two_turn_parallel_tool_calls_streaming(provider, fakes3, gw3):
    fake = fakes3[provider]
    fake.queue(Reply(tool_calls=[("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})],
                     input_tokens=40, output_tokens=22),
               Reply(text="Paris is sunny, Rome is warm.", input_tokens=88, output_tokens=11))
    client = gw3.router_client()
    model = f"{provider}:{MODELS[provider]}"

    first = collect_stream(client.chat.completions.create(
        model=model, messages=QUESTION, tools=[WEATHER_TOOL], stream=True, stream_options={"include_usage": True}))
    assert first["roles"] and first["roles"][0] == (1, "assistant"), "the first chunk must carry the role"
    assert sorted(first["calls"]) == [0, 1], first["calls"]
    calls = [first["calls"][0], first["calls"][1]]
    assert [c["name"] for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c["arguments"]) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert all(c["id"] for c in calls) and calls[0]["id"] != calls[1]["id"]
    assert first["finish"] == ["tool_calls"]
    assert first["usage"] is not None
    assert (first["usage"].prompt_tokens, first["usage"].completion_tokens) == (40, 22)

    history = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18C sunny"},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "25C warm"},
    ]
    second = collect_stream(client.chat.completions.create(
        model=model, messages=history, tools=[WEATHER_TOOL], stream=True, stream_options={"include_usage": True}))
    assert second["text"] == "Paris is sunny, Rome is warm."
    assert second["finish"] == ["stop"]
    assert (second["usage"].prompt_tokens, second["usage"].completion_tokens,
            second["usage"].total_tokens) == (88, 11, 99)

    reqs = generation_requests(provider, fake)
    assert len(reqs) == 2
    for r in reqs:
        assert_provider_auth(provider, r)
    if provider == "gemini":
        assert reqs[0].path == f"/v1beta/models/{MODELS[provider]}:streamGenerateContent"
        assert reqs[0].query.get("alt") == ["sse"]
    else:
        assert reqs[0].json["stream"] is True
    assert_native_tool_turn(provider, reqs[1].json, [c["id"] for c in calls] if provider != "gemini"
                            else [c["id"] for c in calls], ["18C sunny", "25C warm"])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_without_usage_and_length_finish(provider, fakes3, gw3):
    fakes3[provider].queue(Reply(text="This answer was cut", finish="length"),
                           Reply(text="Also cut", finish="length"))
    client = gw3.router_client()
    model = f"{provider}:{MODELS[provider]}"
    got = collect_stream(client.chat.completions.create(model=model, messages=QUESTION, stream=True,
                                                        max_tokens=5))
    assert got["text"] == "This answer was cut"
    assert got["finish"] == ["length"]
    assert got["usage"] is None, "no usage chunk unless stream_options.include_usage"
    resp = client.chat.completions.create(model=model, messages=QUESTION, max_completion_tokens=5)
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.content == "Also cut"
    sent = generation_requests(provider, fakes3[provider])
    assert len(sent) == 2
    for r in sent:
        body = r.json
        if provider == "gemini":
            assert body["generationConfig"]["maxOutputTokens"] == 5
        else:
            assert body["max_tokens"] == 5


@pytest.mark.parametrize("provider", PROVIDERS)
def test_image_parts_are_dropped_and_counted(provider, fakes3, gw3):
    client = gw3.router_client()
    image = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": image}},
    ]}]
    raw = client.chat.completions.with_raw_response.create(model=f"{provider}:{MODELS[provider]}",
                                                           messages=messages)
    assert raw.headers.get("x-portcullis-dropped-parts") == "1"
    assert raw.parse().choices[0].message.content == "echo: describe"
    body = generation_requests(provider, fakes3[provider])[0].body.decode()
    assert "iVBORw0KGgo" not in body and "image" not in body.lower(), body

    # Audio and files are dropped too, and a stream says so in its headers.
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "listen"},
        {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}},
        {"type": "image_url", "image_url": {"url": image}},
    ]}]
    raw = client.chat.completions.with_raw_response.create(model=f"{provider}:{MODELS[provider]}",
                                                           messages=messages, stream=True)
    assert raw.headers.get("x-portcullis-dropped-parts") == "3"
    assert collect_stream(raw.parse())["text"] == "echo: listen"
    body = generation_requests(provider, fakes3[provider])[1].body.decode()
    assert "UklGRiQ" not in body and "JVBERi0x" not in body and "iVBORw0KGgo" not in body, body

    # A last user turn of nothing but images would vanish and leave the assistant's message last
    # (a prefill to Anthropic): refused with a clear 400, nothing sent upstream.
    before = len(generation_requests(provider, fakes3[provider]))
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=f"{provider}:{MODELS[provider]}", messages=[
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Send a picture."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}])
    assert "non-text" in info.value.message and "messages[2]" in info.value.message
    assert len(generation_requests(provider, fakes3[provider])) == before

    # Nothing dropped: no header.
    plain = client.chat.completions.with_raw_response.create(model=f"{provider}:{MODELS[provider]}",
                                                             messages=QUESTION)
    assert plain.headers.get("x-portcullis-dropped-parts") is None


def native_error(provider: str, status: int, message: str) -> dict:
    if provider == "anthropic":
        kind = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}[status]
        return anthropic_error(kind, message)
    if provider == "gemini":
        return gemini_error(status, message)
    return cohere_error(message)


ERRORS = [
    (400, 400, openai.BadRequestError),
    (401, 401, openai.AuthenticationError),
    (403, 403, openai.PermissionDeniedError),
    (404, 404, openai.NotFoundError),
    (429, 429, openai.RateLimitError),
    (500, 500, openai.InternalServerError),
    (529, 503, openai.InternalServerError),
]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_upstream_errors_are_mapped_to_openai(provider, fakes3, gw3):
    fake = fakes3[provider]
    client = gw3.router_client()
    model = f"{provider}:{MODELS[provider]}"
    for upstream_status, status, exc in ERRORS:
        message = f"upstream says no ({upstream_status})"
        headers = {"retry-after": "17"} if upstream_status == 429 else {}
        for stream in (False, True):
            fake.script(upstream_status, native_error(provider, upstream_status, message), headers)
            with pytest.raises(exc) as info:
                r = client.chat.completions.create(model=model, messages=QUESTION, stream=stream)
                if stream:
                    list(r)
            err = info.value
            assert err.status_code == status, (provider, upstream_status, stream, err.status_code)
            body = err.body if isinstance(err.body, dict) else {}
            assert message in str(err.message), (provider, upstream_status, err.message)
            assert body.get("type"), f"OpenAI error shape with a type: {err.body!r}"
            if upstream_status == 429:
                assert err.response.headers.get("retry-after") == "17"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_mid_stream_upstream_error_raises_in_the_openai_sdk(provider, fakes3, gw3):
    fakes3[provider].queue(Reply(text="Partial answer before the failure", stream_error=True))
    client = gw3.router_client()
    stream = client.chat.completions.create(model=f"{provider}:{MODELS[provider]}", messages=QUESTION,
                                            stream=True)
    seen = ""
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            for c in chunk.choices:
                seen += c.delta.content or ""
    assert seen == "Partial answer before the failure"[: len("Partial answer before the failure") // 3]
    assert info.value.message, "the error must say what happened"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_upstream_connection_lost_mid_stream_raises(provider, fakes3, gw3):
    fakes3[provider].queue(Reply(text="Partial answer before the cut", stream_cut=True))
    client = gw3.router_client()
    stream = client.chat.completions.create(model=f"{provider}:{MODELS[provider]}", messages=QUESTION,
                                            stream=True)
    seen = ""
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            for c in chunk.choices:
                seen += c.delta.content or ""
    assert seen == "Partial answer before the cut"[: len("Partial answer before the cut") // 3]
    assert info.value.message


def test_router_lists_discovered_models_of_each_provider(fakes3, start_gateway):
    for fake in fakes3.values():
        fake.page_cap = 2  # force paging
    gw = start_gateway(three_config(fakes3, static=False))
    models = gw.router_client().models.list()
    ids = sorted(m.id for m in models.data)
    assert ids == sorted([
        "anthropic:claude-sonnet-4-6", "anthropic:claude-haiku-4-5", "anthropic:claude-opus-4-7",
        "anthropic:claude-opus-4-6", "anthropic:claude-sonnet-5",
        "gemini:gemini-2.5-flash", "gemini:gemini-2.5-pro", "gemini:gemini-2.0-flash-lite",
        "gemini:gemini-3-pro-preview",
        "cohere:command-a-03-2025", "cohere:command-r-plus-08-2024", "cohere:command-r7b-12-2024",
    ]), ids
    a = fakes3["anthropic"].requests_to("/v1/models", "GET")
    assert [r.query.get("after_id") for r in a[:3]] == [None, ["claude-haiku-4-5"], ["claude-opus-4-6"]]
    for r in a:
        assert_provider_auth("anthropic", r)
        assert r.header("anthropic-version")
    g = fakes3["gemini"].requests_to("/v1beta/models", "GET")
    assert len(g) >= 3 and g[1].query.get("pageToken") == ["2"]
    for r in g:
        assert_provider_auth("gemini", r)
    c = fakes3["cohere"].requests_to("/v1/models", "GET")
    assert c and c[0].query.get("endpoint") == ["chat"] and c[1].query.get("page_token") == ["2"]
    for r in c:
        assert_provider_auth("cohere", r)

    # A discovered model routes: the router sends it to its provider.
    resp = gw.router_client().chat.completions.create(model="gemini:gemini-2.5-pro", messages=QUESTION)
    assert resp.choices[0].message.content == "echo: Weather in Paris and Rome?"
    assert fakes3["gemini"].requests_to("/v1beta/models/gemini-2.5-pro:generateContent", "POST")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_translated_stream_is_not_buffered(provider, fakes3, gw3):
    """The upstream holds its stream after the first piece until the client has it."""
    fake = fakes3[provider]
    fake.stream_gate = threading.Event()
    fake.queue(Reply(text="first piece, then the rest of it"))
    client = gw3.router_client(timeout=10)
    stream = client.chat.completions.create(model=f"{provider}:{MODELS[provider]}", messages=QUESTION,
                                            stream=True)
    text = ""
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
        if text and not fake.stream_gate.is_set():
            fake.stream_gate.set()  # the client has the first piece while the upstream still holds
    assert text == "first piece, then the rest of it"
    assert not fake.gate_timed_out, "the gateway held back the first piece until the upstream stream ended"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True])
def test_cached_usage(provider, stream, fakes3, gw3):
    fakes3[provider].queue(Reply(text="ok", input_tokens=100, output_tokens=10, cached_tokens=40))
    client = gw3.router_client()
    kw = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    r = client.chat.completions.create(model=f"{provider}:{MODELS[provider]}", messages=QUESTION, **kw)
    usage = collect_stream(r)["usage"] if stream else r.usage
    # OpenAI's prompt_tokens include cached tokens. Anthropic reports cache reads apart from
    # input_tokens; Gemini's promptTokenCount and Cohere's tokens.input_tokens include them.
    prompt = 140 if provider == "anthropic" else 100
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (prompt, 10, prompt + 10)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 40


FINISHES = {
    "anthropic": [("stop_sequence", "stop"), ("safety", "content_filter"), ("length", "length")],
    "gemini": [("stop_sequence", "stop"), ("safety", "content_filter"), ("length", "length")],
    "cohere": [("stop_sequence", "stop"), ("length", "length")],
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_finish_reason_mapping(provider, fakes3, gw3):
    client = gw3.router_client()
    model = f"{provider}:{MODELS[provider]}"
    for native, expected in FINISHES[provider]:
        fakes3[provider].queue(Reply(text="some text", finish=native), Reply(text="some text", finish=native))
        r = client.chat.completions.create(model=model, messages=QUESTION, stop=["END"])
        assert r.choices[0].finish_reason == expected, (native, r.choices[0].finish_reason)
        got = collect_stream(client.chat.completions.create(model=model, messages=QUESTION, stream=True))
        assert got["finish"] == [expected], (native, got["finish"])
    body = generation_requests(provider, fakes3[provider])[0].json
    if provider == "gemini":
        assert body["generationConfig"]["stopSequences"] == ["END"]
    else:
        assert body["stop_sequences"] == ["END"]


TOOL_B = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_choice_is_translated(provider, fakes3, gw3):
    client = gw3.router_client()
    model = f"{provider}:{MODELS[provider]}"
    choices = ["auto", "required", {"type": "function", "function": {"name": "get_time"}}, "none"]
    for choice in choices:
        client.chat.completions.create(model=model, messages=QUESTION, tools=[WEATHER_TOOL, TOOL_B],
                                       tool_choice=choice)
    bodies = [r.json for r in generation_requests(provider, fakes3[provider])]
    assert len(bodies) == 4
    if provider == "anthropic":
        assert [b.get("tool_choice") for b in bodies] == [
            {"type": "auto"}, {"type": "any"}, {"type": "tool", "name": "get_time"}, {"type": "none"}], bodies
        client.chat.completions.create(model=model, messages=QUESTION, tools=[WEATHER_TOOL],
                                       parallel_tool_calls=False)
        last = generation_requests(provider, fakes3[provider])[-1].json
        assert last["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    elif provider == "gemini":
        modes = [((b.get("toolConfig") or {}).get("functionCallingConfig") or {}) for b in bodies]
        assert modes[0].get("mode", "AUTO") == "AUTO"
        assert modes[1]["mode"] == "ANY"
        assert modes[2]["mode"] == "ANY" and modes[2]["allowedFunctionNames"] == ["get_time"]
        assert modes[3]["mode"] == "NONE"
    else:
        assert [b.get("tool_choice") for b in bodies] == [None, "REQUIRED", "REQUIRED", "NONE"]
        assert [t["function"]["name"] for t in bodies[2]["tools"]] == ["get_time"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_developer_messages_names_and_consecutive_turns(provider, fakes3, gw3):
    """A developer message, `name`, and two user turns in a row reach each provider in a shape it accepts."""
    client = gw3.router_client()
    messages = [
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "Hello", "name": "alice"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "How are you?"},
        {"role": "user", "content": [{"type": "text", "text": "And the weather?"}]},
    ]
    r = client.chat.completions.create(model=f"{provider}:{MODELS[provider]}", messages=messages)
    assert r.choices[0].message.content.startswith("echo: ")
    assert "And the weather?" in r.choices[0].message.content
    body = generation_requests(provider, fakes3[provider])[0].json
    assert "Answer in French." in json.dumps(body)


HARD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "title": "Booking",
    "additionalProperties": False,
    "$defs": {"city": {"type": "string", "description": "A city", "minLength": 1, "examples": ["Paris"]}},
    "properties": {
        "from": {"$ref": "#/$defs/city"},
        "to": {"$ref": "#/$defs/city"},
        "when": {"type": ["string", "null"], "format": "date-time"},
        "seats": {"type": "integer", "minimum": 1, "maximum": 9, "default": 1},
        "class": {"type": "string", "enum": ["economy", "business"]},
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}, "uniqueItems": True},
        "meta": {"type": "object", "additionalProperties": {"type": "string"}},
        "contact": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}]},
    },
    "required": ["from", "to", "seats"],
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rich_json_schemas_are_accepted(provider, fakes3, gw3):
    """A tool schema and a response schema with keywords Gemini's Schema lacks reach every provider
    in a form it accepts (the Gemini fake refuses unknown fields, as Google's parser does)."""
    fakes3[provider].queue(Reply(tool_calls=[("book", {"from": "Paris", "to": "Rome", "seats": 2})]),
                           Reply(text='{"from": "Paris", "to": "Rome", "seats": 2}'))
    client = gw3.router_client()
    model = f"{provider}:{MODELS[provider]}"
    tool = {"type": "function", "function": {"name": "book", "description": "Book a trip.",
                                             "parameters": HARD_SCHEMA, "strict": True}}
    r = client.chat.completions.create(model=model, messages=QUESTION, tools=[tool])
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments)["seats"] == 2
    r = client.chat.completions.create(model=model, messages=QUESTION, response_format={
        "type": "json_schema", "json_schema": {"name": "booking", "schema": HARD_SCHEMA, "strict": True}})
    assert json.loads(r.choices[0].message.content)["to"] == "Rome"
    bodies = [x.json for x in generation_requests(provider, fakes3[provider])]
    if provider == "gemini":
        params = bodies[0]["tools"][0]["functionDeclarations"][0]["parameters"]
        assert params["properties"]["from"]["type"].lower() == "string", "local $refs are inlined"
        assert params["properties"]["when"].get("nullable") is True
        assert bodies[1]["generationConfig"]["responseMimeType"] == "application/json"
    elif provider == "anthropic":
        assert bodies[0]["tools"][0]["input_schema"]["properties"]["from"] == {"$ref": "#/$defs/city"}
    else:
        assert bodies[0]["tools"][0]["function"]["parameters"]["properties"]["from"] == {"$ref": "#/$defs/city"}
        assert bodies[1]["response_format"]["type"] == "json_object"


def test_gemini_model_ids_cannot_reach_other_upstream_paths(gemini_fake, start_gateway):
    """Gemini names the model in the URL: a router model ID must not climb out of its segment,
    add a query, or name another method, even when discovery lets any model through."""
    gw = start_gateway(three_config({"gemini": gemini_fake}, static=False))
    client = gw.router_client()
    for model in ["gemini:../../v1beta/files/abc", "gemini:gemini-2.5-flash:countTokens",
                  "gemini:gemini-2.5-flash?alt=json&x=", "gemini:a/b", "gemini:gemini-2.5-flash#x"]:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=model, messages=QUESTION)
        assert info.value.body["param"] == "model", info.value.body
    assert [r for r in gemini_fake.all_requests() if r.method == "POST"] == []
    ok = client.chat.completions.create(model="gemini:gemini-2.5-flash", messages=QUESTION)
    assert ok.choices[0].message.content == "echo: Weather in Paris and Rome?"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_results_followed_by_a_user_message(provider, fakes3, gw3):
    """Results of parallel calls and a user message after them: Anthropic wants the results first
    in one user turn, Gemini as many functionResponse parts as there were calls."""
    fake = fakes3[provider]
    fake.queue(Reply(tool_calls=[("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]))
    client = gw3.router_client()
    model = f"{provider}:{MODELS[provider]}"
    first = client.chat.completions.create(model=model, messages=QUESTION, tools=[WEATHER_TOOL])
    calls = first.choices[0].message.tool_calls
    assert len(calls) == 2
    history = QUESTION + [first.choices[0].message.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": f"result {k}"} for k, c in enumerate(calls)] + [
        {"role": "user", "content": "Also, which is warmer?"}]
    second = client.chat.completions.create(model=model, messages=history, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "echo: Also, which is warmer?"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sampling_parameters(provider, fakes3, gw3):
    """OpenAI clients often send temperature and top_p together; current Claude models refuse
    both at once (the fake does too), so Anthropic gets temperature only."""
    client = gw3.router_client()
    r = client.chat.completions.create(model=f"{provider}:{MODELS[provider]}", messages=QUESTION,
                                       temperature=0.3, top_p=0.9, seed=7)
    assert r.choices[0].finish_reason == "stop"
    body = generation_requests(provider, fakes3[provider])[0].json
    if provider == "anthropic":
        assert body["temperature"] == 0.3 and "top_p" not in body and "seed" not in body
    elif provider == "gemini":
        cfg = body["generationConfig"]
        assert (cfg["temperature"], cfg["topP"], cfg["seed"]) == (0.3, 0.9, 7)
    else:
        assert (body["temperature"], body["p"], body["seed"]) == (0.3, 0.9, 7)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_call_ids_from_other_providers(provider, fakes3, gw3):
    """History from another model may carry ids like `functions.get_weather:0`; Anthropic only
    takes `^[a-zA-Z0-9_-]+$` (the fake too), so the gateway rewrites them, call and result alike."""
    client = gw3.router_client()
    history = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "functions.get_weather:0", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "18C"},
    ]
    r = client.chat.completions.create(model=f"{provider}:{MODELS[provider]}", messages=history,
                                       tools=[WEATHER_TOOL])
    assert r.choices[0].finish_reason == "stop"
    if provider == "anthropic":
        body = generation_requests(provider, fakes3[provider])[0].json
        use = body["messages"][-2]["content"][0]
        result = body["messages"][-1]["content"][0]
        assert use["id"] == result["tool_use_id"] and use["id"].startswith("functions_get_weather_0_")


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_3_thought_signatures_round_trip(stream, gemini_fake, start_gateway):
    """Gemini 3 refuses a replayed function call without the thoughtSignature it issued; the
    router hands it to the openai SDK in `extra_content` and sends it back from there."""
    gw = start_gateway(docs(secret_doc("provider-key", PROVIDER_KEY),
                            provider_doc("gemini", gemini_fake.base_url, secret="provider-key", type_="gemini",
                                         static=["gemini-3-pro-preview"]),
                            proxy_doc("team-a", ["gemini"])))
    gemini_fake.queue(Reply(tool_calls=[("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]),
                      Reply(text="Both fine."))
    client = gw.router_client()
    kw = {"stream": True} if stream else {}
    first = client.chat.completions.create(model="gemini:gemini-3-pro-preview", messages=QUESTION,
                                           tools=[WEATHER_TOOL], **kw)
    if stream:
        calls: dict[int, dict] = {}
        for chunk in first:
            for c in chunk.choices:
                for tc in c.delta.tool_calls or []:
                    slot = calls.setdefault(tc.index, {"type": "function", "function": {"name": "", "arguments": ""}})
                    if tc.id:
                        slot["id"] = tc.id
                    if tc.function and tc.function.name:
                        slot["function"]["name"] = tc.function.name
                    if tc.function and tc.function.arguments:
                        slot["function"]["arguments"] += tc.function.arguments
                    extra = (tc.model_extra or {}).get("extra_content")
                    if extra:
                        slot["extra_content"] = extra
        assistant = {"role": "assistant", "content": None, "tool_calls": [calls[i] for i in sorted(calls)]}
    else:
        assistant = first.choices[0].message.model_dump(exclude_none=True)
    issued = sorted(gemini_fake.signatures)
    assert len(issued) == 1
    assert assistant["tool_calls"][0]["extra_content"]["google"]["thought_signature"] == issued[0]
    history = QUESTION + [assistant] + [
        {"role": "tool", "tool_call_id": c["id"], "content": "fine"} for c in assistant["tool_calls"]]
    second = client.chat.completions.create(model="gemini:gemini-3-pro-preview", messages=history,
                                            tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "Both fine."
    sent = [r for r in gemini_fake.all_requests() if r.method == "POST"][-1].json
    model_turn = sent["contents"][-2]
    assert model_turn["parts"][0]["thoughtSignature"] == issued[0], "the issued signature must go back as is"
