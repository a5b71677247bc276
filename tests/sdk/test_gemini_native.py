"""Native Gemini route (`/v1/gemini/{proxy}`) driven by the official `google-genai` SDK."""

from __future__ import annotations

import pytest
from google import genai
from google.genai import errors, types

from fakes.base import Reply
from fakes.gemini_upstream import gemini_error
from harness import CLIENT_KEY
from translated_fixtures import (anthropic_fake, assert_provider_auth, cohere_fake, fakes3, gemini_fake,  # noqa: F401
                                 gw3, only)

MODEL = "gemini-2.5-flash"


def client(gw, api_version: str | None = None, proxy: str = "ai.team-a") -> genai.Client:
    opts = types.HttpOptions(base_url=gw.native_base(proxy, "gemini"), api_version=api_version, timeout=15_000)
    return genai.Client(api_key=CLIENT_KEY, http_options=opts)


@pytest.mark.parametrize("version", [None, "v1beta"])
def test_generate_content(gemini_fake, gw3, version):
    gemini_fake.queue(Reply(text="Hi from Gemini.", input_tokens=9, output_tokens=4, cached_tokens=2))
    c = client(gw3, version)  # keep a reference: a collected genai.Client closes its HTTP client
    r = c.models.generate_content(
        model=MODEL, contents="hello",
        config=types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=50))
    assert r.text == "Hi from Gemini."
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    u = r.usage_metadata
    assert (u.prompt_token_count, u.candidates_token_count, u.total_token_count) == (9, 4, 13)
    assert u.cached_content_token_count == 2

    up = only([x for x in gemini_fake.all_requests() if x.method == "POST"])
    # Current SDKs call v1 by default; older clients (and api_version="v1beta") call v1beta.
    assert up.path == f"/{version or 'v1'}/models/{MODEL}:generateContent"
    assert_provider_auth("gemini", up)
    assert up.json["contents"] == [{"parts": [{"text": "hello"}], "role": "user"}]
    assert "Be brief." in str(up.json["systemInstruction"])


def test_generate_content_stream(gemini_fake, gw3):
    gemini_fake.queue(Reply(text="Streaming from Gemini now.", input_tokens=11, output_tokens=6))
    c = client(gw3)
    chunks = list(c.models.generate_content_stream(model=MODEL, contents="stream please"))
    assert len(chunks) == 3
    assert "".join(c.text or "" for c in chunks) == "Streaming from Gemini now."
    assert chunks[-1].usage_metadata.candidates_token_count == 6
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    up = only([x for x in gemini_fake.all_requests() if x.method == "POST"])
    assert up.path == f"/v1/models/{MODEL}:streamGenerateContent"
    assert up.query.get("alt") == ["sse"]
    assert_provider_auth("gemini", up)


def test_function_calling_round_trip(gemini_fake, gw3):
    gemini_fake.queue(Reply(tool_calls=[("get_weather", {"city": "Lima"})]))
    decl = types.FunctionDeclaration(name="get_weather", description="Weather.",
                                     parameters=types.Schema(type="OBJECT",
                                                             properties={"city": types.Schema(type="STRING")}))
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[decl])])
    c = client(gw3)
    r = c.models.generate_content(model=MODEL, contents="Weather in Lima?", config=config)
    call = r.function_calls[0]
    assert call.name == "get_weather" and call.args == {"city": "Lima"}
    contents = [
        types.Content(role="user", parts=[types.Part(text="Weather in Lima?")]),
        r.candidates[0].content,
        types.Content(role="user", parts=[types.Part.from_function_response(name="get_weather",
                                                                            response={"temp": "20C"})]),
    ]
    r2 = c.models.generate_content(model=MODEL, contents=contents, config=config)
    assert "20C" in r2.text
    for up in [x for x in gemini_fake.all_requests() if x.method == "POST"]:
        assert_provider_auth("gemini", up)


def test_count_tokens_and_models_list(gemini_fake, gw3):
    c = client(gw3)
    assert c.models.count_tokens(model=MODEL, contents="one two three").total_tokens > 0
    gemini_fake.page_cap = 2
    names = [m.name for m in c.models.list(config={"page_size": 2})]
    assert names == [f"models/{n}" for n, _ in gemini_fake.models]
    pages = gemini_fake.requests_to("/v1/models", "GET")
    assert len(pages) == 3 and pages[1].query.get("pageToken") == ["2"]
    for r in gemini_fake.all_requests():
        assert_provider_auth("gemini", r)


def test_client_key_in_query_never_reaches_gemini(gemini_fake, gw3):
    r = gw3.raw("POST", f"/v1/gemini/ai.team-a/v1beta/models/{MODEL}:generateContent?key={CLIENT_KEY}",
                {"contents": [{"role": "user", "parts": [{"text": "x"}]}]},
                headers={"Authorization": "", "x-goog-api-key": CLIENT_KEY})
    assert r.status == 200, r.text
    up = only(gemini_fake.all_requests())
    assert up.target == f"/v1beta/models/{MODEL}:generateContent"
    assert_provider_auth("gemini", up)


def test_errors_in_gemini_shape(gemini_fake, gw3):
    c = client(gw3)
    gemini_fake.script(429, gemini_error(429, "Resource has been exhausted (e.g. check quota)."),
                       {"retry-after": "12"})
    with pytest.raises(errors.ClientError) as info:
        c.models.generate_content(model=MODEL, contents="x")
    assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"
    # The fake refuses what Gemini refuses; the SDK gets Gemini's error.
    with pytest.raises(errors.ClientError) as info:
        c.models.generate_content(model=MODEL, contents=[types.Content(role="assistant", parts=[types.Part(text="x")])])
    assert info.value.code == 400 and "valid role" in info.value.message
    # A model segment that is not a model ID is refused by the gateway, in Gemini's shape.
    r = gw3.raw("POST", "/v1/gemini/ai.team-a/v1beta/models/gemini%3Fx:generateContent",
                {"contents": [{"parts": [{"text": "x"}]}]})
    assert r.status == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT", r.text
    # An unknown proxy: 404 in Gemini's shape.
    nope = client(gw3, proxy="ai.nope")
    with pytest.raises(errors.ClientError) as info:
        nope.models.generate_content(model=MODEL, contents="x")
    assert info.value.code == 404
    assert len([x for x in gemini_fake.all_requests() if x.method == "POST"]) == 2
