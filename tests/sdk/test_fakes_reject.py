"""The fake upstreams refuse what the real APIs refuse (and accept what they accept).

These talk to the fakes directly, so a translation test that passes is known to have sent
something the provider's own validation would let through.
"""

from __future__ import annotations

import http.client
import json

from translated_fixtures import anthropic_fake, cohere_fake, gemini_fake  # noqa: F401


def post(port: int, path: str, body: dict, headers: dict[str, str]) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **headers})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


ANTHROPIC_HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
TOOLS = [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]


def anthropic(fake, body: dict) -> tuple[int, dict]:
    base = {"model": "claude-sonnet-4-5", "max_tokens": 10, "tools": TOOLS}
    return post(fake.port, "/v1/messages", {**base, **body}, ANTHROPIC_HEADERS)


def test_anthropic_rules(anthropic_fake):
    f = anthropic_fake
    status, body = post(f.port, "/v1/messages", {"model": "m", "messages": [{"role": "user", "content": "x"}]},
                        ANTHROPIC_HEADERS)
    assert status == 400 and "max_tokens" in body["error"]["message"] and body["type"] == "error"
    status, body = anthropic(f, {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]})
    assert status == 400 and "system" in body["error"]["message"]
    use = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "r"}]}
    # tool_result whose tool_use is not in the immediately preceding assistant turn: refused.
    status, body = anthropic(f, {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                                              result]})
    assert status == 400 and "tool_use_id" in body["error"]["message"]
    # tool_use without its results in the next turn: refused.
    status, body = anthropic(f, {"messages": [{"role": "user", "content": "q"}, use,
                                              {"role": "user", "content": "no results"}]})
    assert status == 400 and "tool_result" in body["error"]["message"]
    # Consecutive same-role turns are merged, as the real API does: results split over two user turns pass.
    use2 = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}},
                                             {"type": "tool_use", "id": "t2", "name": "f", "input": {}}]}
    r2 = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2", "content": "r"}]}
    status, body = anthropic(f, {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"},
                                              use2, result, r2]})
    assert status == 200, body
    # No key: 401 in Anthropic's shape.
    status, body = post(f.port, "/v1/messages", {}, {"anthropic-version": "2023-06-01"})
    assert status == 401 and body["error"]["type"] == "authentication_error"


def gemini(fake, contents: list) -> tuple[int, dict]:
    return post(fake.port, "/v1beta/models/gemini-2.5-flash:generateContent", {"contents": contents},
                {"x-goog-api-key": "k"})


def test_gemini_rules(gemini_fake):
    f = gemini_fake
    status, body = gemini(f, [{"role": "assistant", "parts": [{"text": "x"}]}])
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT" and "valid role" in body["error"]["message"]
    call = {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]}
    resp = {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"r": 1}}}]}
    status, body = gemini(f, [{"role": "user", "parts": [{"text": "q"}]}, resp])
    assert status == 400 and "function response turn" in body["error"]["message"]
    status, body = gemini(f, [{"role": "user", "parts": [{"text": "q"}]}, call, resp])
    assert status == 200, body
    two = {"role": "user", "parts": [resp["parts"][0], resp["parts"][0]]}
    status, body = gemini(f, [{"role": "user", "parts": [{"text": "q"}]}, call, two])
    assert status == 400 and "number of function response parts" in body["error"]["message"]
    status, body = post(f.port, "/v1beta/models/gemini-2.5-flash:generateContent",
                        {"contents": [{"parts": [{"text": "q"}]}]}, {})
    assert status == 403 and body["error"]["status"] == "PERMISSION_DENIED"


def cohere(fake, messages: list) -> tuple[int, dict]:
    return post(fake.port, "/v2/chat", {"model": "command-a-03-2025", "messages": messages},
                {"Authorization": "Bearer k"})


def test_cohere_rules(cohere_fake):
    f = cohere_fake
    status, body = cohere(f, [{"role": "model", "content": "x"}])
    assert status == 400 and "role" in body["message"] and "id" in body
    status, body = cohere(f, [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}])
    assert status == 400 and "tool_call_id" in body["message"]
    status, body = cohere(f, [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}])
    assert status == 200 and body["finish_reason"] == "COMPLETE"
    status, body = post(f.port, "/v2/chat", {"model": "m", "messages": []}, {})
    assert status == 401


def test_gemini_refuses_unknown_fields_and_schema_keywords(gemini_fake):
    f = gemini_fake
    user = [{"role": "user", "parts": [{"text": "q"}]}]
    decl = {"name": "f", "parameters": {"type": "object", "additionalProperties": False,
                                        "properties": {"a": {"type": "string"}}}}
    status, body = post(f.port, "/v1beta/models/gemini-2.5-flash:generateContent",
                        {"contents": user, "tools": [{"functionDeclarations": [decl]}]}, {"x-goog-api-key": "k"})
    assert status == 400 and 'Unknown name "additionalProperties"' in body["error"]["message"]
    status, body = post(f.port, "/v1beta/models/gemini-2.5-flash:generateContent",
                        {"contents": user, "messages": []}, {"x-goog-api-key": "k"})
    assert status == 400 and 'Unknown name "messages"' in body["error"]["message"]
    decl["parameters"].pop("additionalProperties")
    status, body = post(f.port, "/v1beta/models/gemini-2.5-flash:generateContent",
                        {"contents": user, "tools": [{"function_declarations": [decl]}],
                         "generation_config": {"max_output_tokens": 5}}, {"x-goog-api-key": "k"})
    assert status == 200, body


def test_gemini_3_wants_thought_signatures_back(gemini_fake):
    f = gemini_fake
    user = {"role": "user", "parts": [{"text": "q"}]}
    call = {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]}
    resp = {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"r": 1}}}]}
    path = "/v1beta/models/gemini-3-pro-preview:generateContent"
    status, body = post(f.port, path, {"contents": [user, call, resp]}, {"x-goog-api-key": "k"})
    assert status == 400 and "thought_signature" in body["error"]["message"]
    call["parts"][0]["thoughtSignature"] = "skip_thought_signature_validator"
    status, body = post(f.port, path, {"contents": [user, call, resp]}, {"x-goog-api-key": "k"})
    assert status == 200, body
    # Gemini 2.5 does not ask for them.
    call["parts"][0].pop("thoughtSignature")
    status, body = post(f.port, "/v1beta/models/gemini-2.5-flash:generateContent", {"contents": [user, call, resp]},
                        {"x-goog-api-key": "k"})
    assert status == 200, body
