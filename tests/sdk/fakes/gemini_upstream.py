"""A fake Gemini API (AI Studio, ``generativelanguage.googleapis.com``) for end-to-end tests.

Wire format from the Gemini API reference (ai.google.dev/api), under both ``/v1`` and
``/v1beta``:

* ``POST /{v}/models/{model}:generateContent`` - a ``GenerateContentResponse``
  (``candidates[].content.parts`` with ``text`` / ``functionCall``, ``finishReason``
  ``STOP`` | ``MAX_TOKENS`` | ``SAFETY``, ``usageMetadata``, ``modelVersion``, ``responseId``).
* ``POST /{v}/models/{model}:streamGenerateContent`` - with ``?alt=sse`` one
  ``data: {GenerateContentResponse}`` event per chunk (CRLF-terminated, as Google sends
  them), ``usageMetadata`` on every chunk, ``finishReason`` on the last; without ``alt=sse`` a
  JSON array of the same objects. A mid-stream failure is a ``data: {"error": …}`` event.
* ``POST /{v}/models/{model}:countTokens`` - ``{"totalTokens": N}``.
* ``GET /{v}/models`` - ``{"models": [Model], "nextPageToken"}`` (``pageSize``,
  ``pageToken``); ``GET /{v}/models/{model}`` - one ``Model``.

Errors are ``{"error": {"code", "message", "status"}}``. The key is read from
``x-goog-api-key`` or ``?key=`` (403 ``PERMISSION_DENIED`` without one). It rejects what the
real API rejects: an empty text part, a role other than ``user`` / ``model`` ("Please use a valid role: user,
model."), a ``functionResponse`` turn that does not come right after a ``functionCall`` turn or
whose part count differs, a ``functionCall`` turn that does not follow a user turn or a
function response turn, a Gemini 3 function call replayed without the ``thoughtSignature``
it was issued with (the current turn's first call per step), and unknown field names anywhere in the request (Google's proto JSON
parser refuses them), notably JSON Schema keywords that Gemini's OpenAPI-subset ``Schema``
lacks (``$ref``, ``additionalProperties``, ``oneOf``, ``const``, ...).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from fakes.base import FakeUpstream, Handler, RecordedRequest, split3

DEFAULT_MODELS: list[tuple[str, list[str]]] = [
    ("gemini-2.5-flash", ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]),
    ("gemini-2.5-pro", ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]),
    ("text-embedding-004", ["embedContent"]),
    ("gemini-2.0-flash-lite", ["generateContent", "countTokens"]),
    ("gemini-3-pro-preview", ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]),
    ("imagen-4.0-generate-001", ["predict"]),
]

FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool": "STOP", "stop_sequence": "STOP", "safety": "SAFETY"}
STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
          500: "INTERNAL", 503: "UNAVAILABLE"}

PATH = re.compile(r"^/(v1|v1beta)/models(?:/([A-Za-z0-9._-]+)(?::([A-Za-z]+))?)?$")


class Invalid(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def error_body(code: int, message: str) -> dict:
    return {"error": {"code": code, "message": message, "status": STATUS.get(code, "UNKNOWN")}}


# Fields of the request messages (proto JSON: camelCase or snake_case; unknown names are refused).
REQUEST_FIELDS = {"model", "contents", "tools", "toolConfig", "safetySettings", "systemInstruction",
                  "generationConfig", "cachedContent"}
CONTENT_FIELDS = {"role", "parts"}
PART_FIELDS = {"text", "inlineData", "functionCall", "functionResponse", "fileData", "executableCode",
               "codeExecutionResult", "thought", "thoughtSignature", "videoMetadata", "partMetadata"}
GENERATION_CONFIG_FIELDS = {"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema",
                            "responseModalities", "candidateCount", "maxOutputTokens", "temperature", "topP", "topK",
                            "seed", "presencePenalty", "frequencyPenalty", "responseLogprobs", "logprobs",
                            "enableEnhancedCivicAnswers", "speechConfig", "thinkingConfig", "mediaResolution",
                            "imageConfig"}
TOOL_FIELDS = {"functionDeclarations", "googleSearch", "googleSearchRetrieval", "codeExecution", "urlContext",
               "computerUse", "fileSearch", "googleMaps"}
FUNCTION_DECLARATION_FIELDS = {"name", "description", "parameters", "parametersJsonSchema", "response",
                               "responseJsonSchema", "behavior"}
# Gemini's `Schema`: a subset of OpenAPI 3.0 (no $ref, $defs, additionalProperties, oneOf, const, ...).
SCHEMA_FIELDS = {"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
                 "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example",
                 "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum"}
SCHEMA_TYPES = {"TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def check_fields(obj: Any, allowed: set[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise Invalid(f"Invalid JSON payload received. Expected an object at '{where}'.")
    for key in obj:
        if _camel(key) not in allowed:
            raise Invalid(f'Invalid JSON payload received. Unknown name "{key}" at \'{where}\': Cannot find field.')


def check_schema(schema: Any, where: str) -> None:
    check_fields(schema, SCHEMA_FIELDS, where)
    t = schema.get("type")
    if t is not None and (not isinstance(t, str) or t.upper() not in SCHEMA_TYPES):
        raise Invalid(f"Invalid JSON payload received. Invalid value at '{where}.type' ({json.dumps(t)})")
    for name, sub in (schema.get("properties") or {}).items():
        check_schema(sub, f"{where}.properties[{json.dumps(name)}].value")
    if "items" in schema:
        check_schema(schema["items"], f"{where}.items")
    for k, sub in enumerate(schema.get("anyOf") or []):
        check_schema(sub, f"{where}.any_of[{k}]")


def check_request(body: dict) -> None:
    """Unknown field names are refused anywhere, as by Google's proto JSON parser."""
    check_fields(body, REQUEST_FIELDS, "")
    system = body.get("systemInstruction", body.get("system_instruction"))
    if system is not None:
        check_fields(system, CONTENT_FIELDS, "system_instruction")
        for j, p in enumerate(system.get("parts") or []):
            check_fields(p, PART_FIELDS, f"system_instruction.parts[{j}]")
    for i, c in enumerate(body.get("contents") or []):
        check_fields(c, CONTENT_FIELDS, f"contents[{i}]")
        for j, p in enumerate(c.get("parts") or []):
            check_fields(p, PART_FIELDS, f"contents[{i}].parts[{j}]")
    config = body.get("generationConfig", body.get("generation_config"))
    if config is not None:
        check_fields(config, GENERATION_CONFIG_FIELDS, "generation_config")
        schema = config.get("responseSchema", config.get("response_schema"))
        if schema is not None:
            check_schema(schema, "generation_config.response_schema")
    for i, tool in enumerate(body.get("tools") or []):
        check_fields(tool, TOOL_FIELDS, f"tools[{i}]")
        for j, decl in enumerate(tool.get("functionDeclarations", tool.get("function_declarations")) or []):
            where = f"tools[{i}].function_declarations[{j}]"
            check_fields(decl, FUNCTION_DECLARATION_FIELDS, where)
            if decl.get("parameters") is not None:
                check_schema(decl["parameters"], f"{where}.parameters")


def validate_contents(body: dict) -> list[dict]:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise Invalid("* GenerateContentRequest.contents: contents is not specified")
    for i, c in enumerate(contents):
        role = c.get("role", "user")
        if role not in ("user", "model"):
            raise Invalid("Please use a valid role: user, model.")
        parts = c.get("parts")
        if not isinstance(parts, list) or not parts:
            raise Invalid(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.")
        for j, p in enumerate(parts):
            known = {"text", "inlineData", "inline_data", "functionCall", "function_call", "functionResponse",
                     "function_response", "fileData", "file_data", "executableCode", "codeExecutionResult"}
            if not isinstance(p, dict) or not (set(p) & known):
                raise Invalid(f"* GenerateContentRequest.contents[{i}].parts[{j}].data: required oneof field "
                              "'data' must have one initialized field")
            if "text" in p and p["text"] == "" and not p.get("thoughtSignature"):
                raise Invalid("Unable to submit request because it has an empty text parameter. Add a value to "
                              "the parameter and try again.")
    for i, c in enumerate(contents):
        for j, p in enumerate(c["parts"]):
            call = p.get("functionCall", p.get("function_call"))
            if call is not None and (not call.get("name") or not isinstance(call.get("args", {}), dict)):
                raise Invalid(f"Invalid value at 'contents[{i}].parts[{j}].function_call.args' "
                              "(type.googleapis.com/google.protobuf.Struct)")
            resp = p.get("functionResponse", p.get("function_response"))
            if resp is not None:
                if not resp.get("name"):
                    raise Invalid(f"* GenerateContentRequest.contents[{i}].parts[{j}].function_response.name: "
                                  "Name cannot be empty.")
                if not isinstance(resp.get("response"), dict):
                    raise Invalid(f"Invalid value at 'contents[{i}].parts[{j}].function_response.response' "
                                  "(type.googleapis.com/google.protobuf.Struct)")
    for i, c in enumerate(contents):
        calls = [p for p in c["parts"] if "functionCall" in p or "function_call" in p]
        responses = [p for p in c["parts"] if "functionResponse" in p or "function_response" in p]
        prev = contents[i - 1] if i > 0 else None
        if responses:
            prev_calls = [p for p in (prev or {}).get("parts", []) if "functionCall" in p or "function_call" in p]
            if not prev_calls:
                raise Invalid("Please ensure that function response turn comes immediately after a function "
                              "call turn.")
            if len(prev_calls) != len(responses):
                raise Invalid("Please ensure that the number of function response parts is equal to the number "
                              "of function call parts of the function call turn.")
        if calls:
            ok = prev is not None and prev.get("role", "user") == "user"
            if not ok:
                raise Invalid("Please ensure that function call turns come immediately after a user turn or "
                              "after a function response turn.")
    return contents


def last_user_text(contents: list[dict]) -> str:
    for c in reversed(contents):
        if c.get("role", "user") == "user":
            texts = [p["text"] for p in c["parts"] if "text" in p]
            if texts:
                return " ".join(texts)
            for p in c["parts"]:
                r = p.get("functionResponse") or p.get("function_response")
                if r:
                    return json.dumps(r.get("response"))
    return ""


SKIP_SIGNATURE = "skip_thought_signature_validator"  # documented for calls not made by Gemini


def check_thought_signatures(contents: list[dict], issued: set[str]) -> None:
    """Gemini 3: in the current turn (after the last user text), the first functionCall part of
    each model step must carry the thoughtSignature it was issued with (or the documented skip
    value)."""
    start = 0
    for i, c in enumerate(contents):
        if c.get("role", "user") == "user" and any("text" in p for p in c["parts"]):
            start = i
    for i, c in enumerate(contents[start:], start):
        calls = [p for p in c["parts"] if "functionCall" in p or "function_call" in p]
        if c.get("role") == "model" and calls:
            sig = calls[0].get("thoughtSignature", calls[0].get("thought_signature"))
            if sig not in issued and sig != SKIP_SIGNATURE:
                name = (calls[0].get("functionCall") or calls[0].get("function_call"))["name"]
                raise Invalid(f"Function call is missing a thought_signature in functionCall parts. This is "
                              f"required for tools to work correctly. Additional data, function call "
                              f"`default_api:{name}`, position {i + 1}. Please refer to "
                              "https://ai.google.dev/gemini-api/docs/thought-signatures for more details.")


class FakeGemini(FakeUpstream):
    """The fake Gemini API; ``base_url`` is the API root (requests go to ``/v1beta/...``)."""

    def __init__(self) -> None:
        super().__init__()
        self.models: list[tuple[str, list[str]]] = list(DEFAULT_MODELS)
        self.counter = 0
        self.signatures: set[str] = set()  # thought signatures issued (Gemini 3 models)

    def route(self, h: Handler, req: RecordedRequest) -> None:
        key = req.header("x-goog-api-key") or (req.query.get("key") or [None])[0]
        if not key:
            h.send_json(403, error_body(403, "Method doesn't allow unregistered callers (callers without "
                                             "established identity). Please use API Key or other form of API "
                                             "consumer identity to call this API."))
            return
        m = PATH.match(req.path)
        try:
            if m is None:
                raise Invalid(f"The requested URL {req.path} was not found on this server.", 404)
            _version, model, method = m.groups()
            if model is None and req.method == "GET":
                self._list(h, req)
            elif model is not None and method is None and req.method == "GET":
                entry = next((x for x in self.models if x[0] == model), None)
                if entry is None:
                    raise Invalid(f"models/{model} is not found for API version, or is not supported.", 404)
                h.send_json(200, self._model(entry))
            elif model is not None and req.method == "POST" and method in (
                    "generateContent", "streamGenerateContent", "countTokens", "batchEmbedContents"):
                if model not in [x[0] for x in self.models]:
                    raise Invalid(f"models/{model} is not found for API version {_version}, or is not supported "
                                  f"for {method}. Call ListModels to see the list of available models and "
                                  "their supported methods.", 404)
                try:
                    body = json.loads(req.body)
                except ValueError:
                    raise Invalid("Invalid JSON payload received.") from None
                if method == "batchEmbedContents":
                    self._batch_embed(h, model, body)
                    return
                if method == "countTokens":
                    inner = body.get("generateContentRequest") or body
                    contents = validate_contents(inner)
                    h.send_json(200, {"totalTokens": 3 + len(json.dumps(contents).split())})
                else:
                    self._generate(h, req, model, body, stream=method == "streamGenerateContent")
            else:
                raise Invalid(f"Method {req.method} {req.path} is not supported.", 404)
        except Invalid as e:
            h.send_json(e.status, error_body(e.status, str(e)))

    def _batch_embed(self, h: Handler, model: str, body: dict) -> None:
        """``models/{m}:batchEmbedContents``: at most 100 requests, each naming the same model; a
        vector per request (its text length, then fixed values), ``outputDimensionality`` long."""
        methods = next(x[1] for x in self.models if x[0] == model)
        if "embedContent" not in methods:
            raise Invalid(f"models/{model} is not found for API version v1beta, or is not supported for "
                          "batchEmbedContents.", 404)
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise Invalid("* BatchEmbedContentsRequest.requests: must not be empty")
        if len(requests) > 100:
            raise Invalid("* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch")
        check_fields(body, {"requests"}, "BatchEmbedContentsRequest")
        out = []
        for i, r in enumerate(requests):
            check_fields(r, {"model", "content", "taskType", "title", "outputDimensionality"},
                         f"requests[{i}]")
            if r.get("model") != f"models/{model}":
                raise Invalid(f"* BatchEmbedContentsRequest.requests[{i}].model: the model must be models/{model}")
            parts = (r.get("content") or {}).get("parts") or []
            text = "".join(p.get("text", "") for p in parts)
            if not text:
                raise Invalid(f"* BatchEmbedContentsRequest.requests[{i}].content: must contain text")
            dims = int(r.get("outputDimensionality") or 4)
            values = ([float(len(text)), 0.5, -0.25, float(i)] + [0.125] * dims)[:dims]
            out.append({"values": values})
        h.send_json(200, {"embeddings": out})

    @staticmethod
    def _model(entry: tuple[str, list[str]]) -> dict:
        name, methods = entry
        return {"name": f"models/{name}", "version": "001", "displayName": name.replace("-", " ").title(),
                "description": f"Fake {name}", "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
                "supportedGenerationMethods": methods}

    def _list(self, h: Handler, req: RecordedRequest) -> None:
        size = int((req.query.get("pageSize") or ["50"])[0])
        start = int((req.query.get("pageToken") or ["0"])[0] or 0)
        size = min(size, self.page_cap)
        page = self.models[start:start + size]
        out: dict[str, Any] = {"models": [self._model(e) for e in page]}
        if start + size < len(self.models):
            out["nextPageToken"] = str(start + size)
        h.send_json(200, out)

    def _generate(self, h: Handler, req: RecordedRequest, model: str, body: dict, stream: bool) -> None:
        check_request(body)
        contents = validate_contents(body)
        thinking = model.startswith("gemini-3")
        if thinking:
            with self._lock:
                issued = set(self.signatures)
            check_thought_signatures(contents, issued)
        reply = self.next_reply()
        with self._lock:
            self.counter += 1
            n = self.counter
        text = reply.text_for(last_user_text(contents))
        finish = FINISH[reply.finish_reason()]
        usage = {"promptTokenCount": reply.input_tokens, "candidatesTokenCount": reply.output_tokens,
                 "totalTokenCount": reply.input_tokens + reply.output_tokens,
                 "promptTokensDetails": [{"modality": "TEXT", "tokenCount": reply.input_tokens}]}
        if reply.cached_tokens:
            usage["cachedContentTokenCount"] = reply.cached_tokens
        calls = [{"functionCall": {"name": name, "args": args}} for name, args in reply.tool_calls]
        if thinking and calls:
            sig = base64.b64encode(f"fake-thought-{n}".encode()).decode()
            calls[0]["thoughtSignature"] = sig
            with self._lock:
                self.signatures.add(sig)

        def response(parts: list[dict], finish_reason: str | None, usage_md: dict) -> dict:
            cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
            if finish_reason:
                cand["finishReason"] = finish_reason
            return {"candidates": [cand], "usageMetadata": usage_md, "modelVersion": model,
                    "responseId": f"fakeresp{n:04d}"}

        if not stream:
            parts = ([{"text": text}] if text else []) + calls
            h.send_json(200, response(parts, finish, usage))
            return
        pieces = split3(text)
        chunks: list[dict] = []
        partial_usage = {"promptTokenCount": reply.input_tokens, "totalTokenCount": reply.input_tokens}
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1 and not calls
            chunks.append(response([{"text": piece}], finish if last else None, usage if last else partial_usage))
        if calls:
            chunks.append(response(calls, finish, usage))
        if not chunks:
            chunks.append(response([{"text": ""}], finish, usage))
        alt_sse = (req.query.get("alt") or [""])[0] == "sse"
        if not alt_sse:
            h.send_json(200, chunks)
            return
        h.start_stream()
        for k, c in enumerate(chunks):
            h.write_chunk(f"data: {json.dumps(c)}\r\n\r\n".encode())
            if k == 0:
                h.hold()
            if reply.stream_cut and k == 0:
                h.cut()
                return
            if reply.stream_error and k == 0:
                h.write_chunk(("data: " + json.dumps(error_body(503, "The model is overloaded. Please try again "
                                                                     "later.")) + "\r\n\r\n").encode())
                break
        h.end_stream()


def gemini_error(code: int, message: str) -> dict:
    """A Gemini error body, for scripting."""
    return error_body(code, message)
