"""A fake Cohere API (v2 Chat, models) for end-to-end tests.

Wire format from Cohere's API reference (docs.cohere.com/reference/chat, /chat-stream,
/list-models):

* ``POST /v2/chat`` - ``{"id", "finish_reason", "message": {"role": "assistant", "content":
  [{"type": "text", "text"}], "tool_plan", "tool_calls": [{"id", "type": "function",
  "function": {"name", "arguments"}}]}, "usage": {"billed_units", "tokens", "cached_tokens"}}``
  with ``finish_reason`` ``COMPLETE`` | ``STOP_SEQUENCE`` | ``MAX_TOKENS`` | ``TOOL_CALL`` |
  ``ERROR``; with ``"stream": true`` an SSE stream (``event:`` + ``data:``) of
  ``message-start``, ``content-start``, ``content-delta``, ``content-end``, ``tool-plan-delta``,
  ``tool-call-start``, ``tool-call-delta``, ``tool-call-end``, ``message-end`` (finish reason
  and usage; ``finish_reason: ERROR`` with ``error`` when the generation fails mid-stream).
* ``GET /v1/models`` - ``{"models": [{"name", "endpoints", ...}], "next_page_token"}``
  (``endpoint``, ``page_size``, ``page_token``).

Errors are ``{"id", "message"}``. It rejects what the real API rejects: no bearer token
(401), a missing ``model`` or ``messages``, a role other than ``system`` / ``user`` /
``assistant`` / ``tool``, and a ``tool`` message without ``tool_call_id`` or ``content``.
"""

from __future__ import annotations

import json
from typing import Any

from fakes.base import FakeUpstream, Handler, RecordedRequest, split3

DEFAULT_MODELS: list[tuple[str, list[str]]] = [
    ("command-a-03-2025", ["generate", "chat", "summarize"]),
    ("command-r-plus-08-2024", ["generate", "chat", "summarize"]),
    ("embed-v4.0", ["embed", "classify"]),
    ("command-r7b-12-2024", ["generate", "chat"]),
    ("rerank-v3.5", ["rerank"]),
]

FINISH = {"stop": "COMPLETE", "length": "MAX_TOKENS", "tool": "TOOL_CALL", "stop_sequence": "STOP_SEQUENCE",
          "safety": "ERROR"}


class Invalid(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def error_body(message: str) -> dict:
    return {"id": "f3c1e0a2-fake-4d8e-9b71-0c2f5e6a7b80", "message": message}


def validate(body: dict) -> list[dict]:
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Invalid("invalid request: model must be specified")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("invalid request: messages must not be empty")
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "user", "assistant", "tool"):
            raise Invalid(f"invalid request: messages[{i}]: role must be one of system, user, assistant or "
                          f"tool, got {role!r}")
        if role == "assistant":
            for c in m.get("tool_calls") or []:
                fn = c.get("function") or {}
                if not c.get("id") or not fn.get("name") or not isinstance(fn.get("arguments"), str):
                    raise Invalid(f"invalid request: messages[{i}].tool_calls: id, function.name and "
                                  "function.arguments (a string) are required")
            if not m.get("content") and not m.get("tool_calls"):
                raise Invalid(f"invalid request: messages[{i}]: an assistant message needs content or "
                              "tool_calls")
        elif role == "tool":
            if not m.get("tool_call_id"):
                raise Invalid(f"invalid request: messages[{i}]: tool_call_id is required for tool messages")
            if m.get("content") in (None, "", []):
                raise Invalid(f"invalid request: messages[{i}]: content is required for tool messages")
        else:
            if m.get("content") in (None, "", []):
                raise Invalid(f"invalid request: messages[{i}]: content must not be empty")
    for k, t in enumerate(body.get("tools") or []):
        if t.get("type") != "function" or not (t.get("function") or {}).get("name"):
            raise Invalid(f"invalid request: tools[{k}]: type must be \"function\" with function.name")
    if body.get("tool_choice") not in (None, "REQUIRED", "NONE"):
        raise Invalid("invalid request: tool_choice must be one of REQUIRED or NONE")
    return messages


def last_user_text(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m["role"] in ("user", "tool"):
            c = m.get("content")
            if isinstance(c, list):
                c = " ".join(str(x.get("text", x.get("document", ""))) for x in c if isinstance(x, dict))
            return str(c)
    return ""


class FakeCohere(FakeUpstream):
    """The fake Cohere API; ``base_url`` is the API root (``/v2/chat``, ``/v1/models``)."""

    def __init__(self) -> None:
        super().__init__()
        self.models: list[tuple[str, list[str]]] = list(DEFAULT_MODELS)
        self.counter = 0

    def route(self, h: Handler, req: RecordedRequest) -> None:
        auth = req.header("authorization") or ""
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            h.send_json(401, error_body("no api key supplied"))
            return
        try:
            if req.path == "/v2/chat" and req.method == "POST":
                try:
                    body = json.loads(req.body)
                except ValueError:
                    raise Invalid("invalid request: the body is not valid JSON") from None
                self._chat(h, body)
            elif req.path == "/v2/embed" and req.method == "POST":
                try:
                    body = json.loads(req.body)
                except ValueError:
                    raise Invalid("invalid request: the body is not valid JSON") from None
                self._embed(h, body)
            elif req.path == "/v1/models" and req.method == "GET":
                self._models(h, req)
            else:
                raise Invalid(f"Not Found: {req.method} {req.path}", 404)
        except Invalid as e:
            h.send_json(e.status, error_body(str(e)))

    def _embed(self, h: Handler, body: dict) -> None:
        """``/v2/embed``: at most 96 texts; ``input_type`` and ``embedding_types`` required (v2)."""
        model = body.get("model")
        if model not in [m for m, eps in self.models if "embed" in eps]:
            raise Invalid(f"model '{model}' not found, make sure the correct model ID was used", 404)
        texts = body.get("texts")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise Invalid("invalid request: texts must be a non-empty list of non-empty strings")
        if len(texts) > 96:
            raise Invalid(f"invalid request: total number of texts must be at most 96 - received {len(texts)}")
        if body.get("input_type") not in ("search_document", "search_query", "classification", "clustering"):
            raise Invalid("invalid request: input_type is required for embed models v3 and higher")
        types = body.get("embedding_types")
        if not isinstance(types, list) or not types:
            raise Invalid("invalid request: embedding_types is required")
        dims = int(body.get("output_dimension") or 4)
        vectors = [([float(len(t)), 0.5, -0.25, float(i)] + [0.125] * dims)[:dims] for i, t in enumerate(texts)]
        tokens = sum(len(t.split()) for t in texts)
        with self._lock:
            self.counter += 1
        h.send_json(200, {"id": f"embed-fake{self.counter:03d}", "texts": texts,
                          "embeddings": {t: vectors for t in types if t == "float"},
                          "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
                          "response_type": "embeddings_by_type"})

    def _models(self, h: Handler, req: RecordedRequest) -> None:
        endpoint = (req.query.get("endpoint") or [None])[0]
        size = int((req.query.get("page_size") or ["20"])[0])
        start = int((req.query.get("page_token") or ["0"])[0] or 0)
        models = [m for m in self.models if endpoint is None or endpoint in m[1]]
        size = min(size, self.page_cap)
        page = models[start:start + size]
        out: dict[str, Any] = {"models": [{"name": name, "endpoints": eps, "finetuned": False,
                                           "context_length": 256000, "default_endpoints": eps[:1],
                                           "features": ["tools"] if "chat" in eps else []}
                                          for name, eps in page]}
        if start + size < len(models):
            out["next_page_token"] = str(start + size)
        h.send_json(200, out)

    def _chat(self, h: Handler, body: dict) -> None:
        messages = validate(body)
        reply = self.next_reply()
        with self._lock:
            self.counter += 1
            n = self.counter
        chat_id = f"c0fe{n:04d}-fake-4e1b-9a0d-cohere"
        text = reply.text_for(last_user_text(messages))
        finish = FINISH[reply.finish_reason()]
        plan = "I will call the tools." if reply.tool_calls else ""
        calls = [{"id": f"{name}_fake{n:02d}{k}", "type": "function",
                  "function": {"name": name, "arguments": json.dumps(args)}}
                 for k, (name, args) in enumerate(reply.tool_calls)]
        # `tokens` is what the model processed; `billed_units` leaves out the prompt template.
        usage = {"billed_units": {"input_tokens": max(1, reply.input_tokens - 5), "output_tokens": reply.output_tokens},
                 "tokens": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
                 "cached_tokens": reply.cached_tokens}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant"}
            if text:
                message["content"] = [{"type": "text", "text": text}]
            if calls:
                message["tool_plan"] = plan
                message["tool_calls"] = calls
            h.send_json(200, {"id": chat_id, "finish_reason": finish, "message": message, "usage": usage})
            return

        def event(data: dict) -> None:
            h.write_chunk(f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode())

        h.start_stream()
        event({"id": chat_id, "type": "message-start", "delta": {"message": {
            "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}})
        if text:
            event({"type": "content-start", "index": 0,
                   "delta": {"message": {"content": {"type": "text", "text": ""}}}})
            for k, piece in enumerate(split3(text)):
                event({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": piece}}}})
                if k == 0:
                    h.hold()
                if reply.stream_cut and k == 0:
                    h.cut()
                    return
                if reply.stream_error and k == 0:
                    event({"type": "message-end", "delta": {
                        "error": "internal server error, this has been reported to our developers",
                        "finish_reason": "ERROR"}})
                    h.end_stream()
                    return
            event({"type": "content-end", "index": 0})
        if calls:
            event({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": plan}}})
        for k, c in enumerate(calls):
            event({"type": "tool-call-start", "index": k, "delta": {"message": {"tool_calls": {
                "id": c["id"], "type": "function", "function": {"name": c["function"]["name"], "arguments": ""}}}}})
            raw = c["function"]["arguments"]
            cut = len(raw) // 2
            for part in (raw[:cut], raw[cut:]):
                event({"type": "tool-call-delta", "index": k,
                       "delta": {"message": {"tool_calls": {"function": {"arguments": part}}}}})
            event({"type": "tool-call-end", "index": k})
        event({"type": "message-end", "delta": {"finish_reason": finish, "usage": usage}})
        h.end_stream()


def cohere_error(message: str) -> dict:
    """A Cohere error body, for scripting."""
    return error_body(message)
