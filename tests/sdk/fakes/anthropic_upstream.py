"""A fake Anthropic API (Messages, token counting, models) for end-to-end tests.

Wire format from Anthropic's API reference (docs.anthropic.com / platform.claude.com):

* ``POST /v1/messages`` - a ``message`` object (``content`` blocks ``text`` / ``tool_use``,
  ``stop_reason`` ``end_turn`` | ``max_tokens`` | ``stop_sequence`` | ``tool_use`` | ``refusal``,
  ``usage`` with ``input_tokens``, ``output_tokens``, ``cache_creation_input_tokens``,
  ``cache_read_input_tokens``); with ``"stream": true`` an SSE stream of ``message_start``,
  ``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta``,
  ``input_json_delta``), ``content_block_stop``, ``message_delta`` (stop reason + output
  usage), ``message_stop``; a mid-stream failure is an ``error`` event.
* ``POST /v1/messages/count_tokens`` - ``{"input_tokens": N}``.
* ``GET /v1/models`` - paged list (``limit``, ``after_id``; ``has_more``, ``first_id``,
  ``last_id``).

Errors are ``{"type": "error", "error": {"type", "message"}, "request_id"}``. It rejects what
the real API rejects: no ``x-api-key`` (401), no ``anthropic-version`` (400), a missing
``max_tokens``, tool ids outside ``^[a-zA-Z0-9_-]+$``, ``temperature`` together with ``top_p`` (current models), unknown top-level fields, empty text blocks and empty turns, a ``system`` role in
``messages``, a ``tool_result`` whose ``tool_use`` is not
in the immediately preceding assistant turn, and ``tool_use`` blocks not answered by
``tool_result`` blocks in the next turn. Consecutive turns of the same role are merged
first, as the real API does.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fakes.base import FakeUpstream, Handler, RecordedRequest, split3

DEFAULT_MODELS = ["claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-7", "claude-opus-4-6", "claude-sonnet-5"]

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use",
                "stop_sequence": "stop_sequence", "safety": "refusal"}


class Invalid(Exception):
    def __init__(self, message: str, status: int = 400, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.type_ = status, type_


def error_body(type_: str, message: str) -> dict:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_fake01"}


def _blocks(content: Any) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return content
    raise Invalid("messages: content: Input should be a valid string or list of content blocks")


# Top-level fields of a Messages request; the API refuses others ("Extra inputs are not permitted").
# (The fields of `MessageCreateParams` in the pinned `anthropic` SDK, plus the sampling
# parameters `temperature`, `top_p`, `top_k` that earlier API versions documented.)
REQUEST_FIELDS = {"model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream", "temperature",
                  "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers",
                  "context_management", "output_config", "inference_geo", "cache_control", "diagnostics", "speed",
                  "user_profile_id", "workspace_id"}


def validate_messages(body: dict, need_max_tokens: bool) -> list[dict]:
    """The checks of the real API that a translation could get wrong; returns merged turns."""
    for key in body:
        if key not in REQUEST_FIELDS:
            raise Invalid(f"{key}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Invalid("model: Field required")
    if need_max_tokens:
        if "max_tokens" not in body:
            raise Invalid("max_tokens: Field required")
        if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
            raise Invalid("max_tokens: Input should be a valid integer greater than or equal to 1")
    if "temperature" in body and "top_p" in body:
        raise Invalid("`temperature` and `top_p` cannot both be specified for this model. Please use only one.")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise Invalid("messages: Field required")
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise Invalid("system: Input should be a valid string or a list of text blocks")
    merged: list[dict] = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role == "system":
            raise Invalid(f'messages.{i}.role: Unexpected role "system". The Messages API accepts a top-level '
                          '`system` parameter, not "system" as an input message role.')
        if role not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        blocks = _blocks(m.get("content"))
        for j, b in enumerate(blocks):
            t = b.get("type") if isinstance(b, dict) else None
            if t not in ("text", "image", "document", "tool_use", "tool_result", "thinking",
                         "redacted_thinking", "search_result", "server_tool_use"):
                raise Invalid(f"messages.{i}.content.{j}.type: Input tag '{t}' found using 'type' does not "
                              "match any of the expected tags")
            if t == "tool_use" and role != "assistant":
                raise Invalid(f"messages.{i}.content.{j}: `tool_use` blocks can only be in `assistant` messages")
            if t == "tool_result" and role != "user":
                raise Invalid(f"messages.{i}.content.{j}: `tool_result` blocks can only be in `user` messages")
            if t == "text" and not isinstance(b.get("text"), str):
                raise Invalid(f"messages.{i}.content.{j}.text: Field required")
            if t == "text" and not b["text"]:
                raise Invalid(f"messages.{i}.content.{j}: text content blocks must be non-empty")
            if t == "tool_use" and not re.fullmatch(r"[a-zA-Z0-9_-]+", str(b.get("id", ""))):
                raise Invalid(f"messages.{i}.content.{j}.tool_use.id: String should match pattern "
                              "'^[a-zA-Z0-9_-]+$'")
            if t == "tool_result" and not re.fullmatch(r"[a-zA-Z0-9_-]+", str(b.get("tool_use_id", ""))):
                raise Invalid(f"messages.{i}.content.{j}.tool_result.tool_use_id: String should match pattern "
                              "'^[a-zA-Z0-9_-]+$'")
            if t == "tool_use" and not isinstance(b.get("input"), dict):
                raise Invalid(f"messages.{i}.content.{j}.tool_use.input: Input should be a valid dictionary")
        if not blocks and i != len(messages) - 1:
            raise Invalid(f"messages.{i}: all messages must have non-empty content except for the optional final "
                          "assistant message")
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"] = merged[-1]["content"] + blocks
        else:
            merged.append({"role": role, "content": list(blocks)})
    # tool_use ↔ tool_result pairing, on the merged turns.
    for i, m in enumerate(merged):
        prev = merged[i - 1] if i > 0 else None
        prev_ids = [b.get("id") for b in (prev or {}).get("content", []) if b.get("type") == "tool_use"]
        results = [b for b in m["content"] if b.get("type") == "tool_result"]
        for b in results:
            if b.get("tool_use_id") not in prev_ids:
                raise Invalid(f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                              f"{b.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                              "`tool_use` block in the previous message.")
        if prev_ids:
            answered = {b.get("tool_use_id") for b in results}
            missing = [x for x in prev_ids if x not in answered]
            if missing:
                raise Invalid(f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately "
                              f"after: {', '.join(map(str, missing))}. Each `tool_use` block must have a "
                              "corresponding `tool_result` block in the next message.")
            lead = m["content"][: len(results)]
            if any(b.get("type") != "tool_result" for b in lead):
                raise Invalid(f"messages.{i}: Did not find {len(prev_ids)} `tool_result` block(s) at the beginning "
                              "of this message. Messages following `tool_use` blocks must begin with a matching "
                              "number of `tool_result` blocks.")
    for k, tool in enumerate(body.get("tools") or []):
        if tool.get("type") in (None, "custom"):
            if not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema"), dict):
                raise Invalid(f"tools.{k}.custom.input_schema: Field required")
            if tool["input_schema"].get("type") != "object":
                raise Invalid(f"tools.{k}.custom.input_schema.type: Input should be 'object'")
    choice = body.get("tool_choice")
    if choice is not None and choice.get("type") not in ("auto", "any", "tool", "none"):
        raise Invalid("tool_choice.type: Input tag does not match any of the expected tags: 'auto', 'any', "
                      "'tool', 'none'")
    return merged


def last_user_text(merged: list[dict]) -> str:
    for m in reversed(merged):
        if m["role"] == "user":
            texts = [b.get("text", "") for b in m["content"] if b.get("type") == "text"]
            if texts:
                return " ".join(texts)
            results = [b for b in m["content"] if b.get("type") == "tool_result"]
            if results:
                c = results[-1].get("content")
                if isinstance(c, list):
                    c = " ".join(x.get("text", "") for x in c if isinstance(x, dict))
                return str(c)
    return ""


class FakeAnthropic(FakeUpstream):
    """The fake Anthropic API; ``base_url`` is the API root (requests go to ``/v1/...``)."""

    def __init__(self) -> None:
        super().__init__()
        self.models: list[str] = list(DEFAULT_MODELS)
        self.counter = 0

    def route(self, h: Handler, req: RecordedRequest) -> None:
        if req.header("x-api-key") is None:
            h.send_json(401, error_body("authentication_error", "x-api-key header is required"))
            return
        if req.header("anthropic-version") is None:
            h.send_json(400, error_body("invalid_request_error", "anthropic-version: header is required"))
            return
        try:
            if req.path == "/v1/messages" and req.method == "POST":
                self._messages(h, req)
            elif req.path == "/v1/messages/count_tokens" and req.method == "POST":
                body = self._json(req)
                merged = validate_messages(body, need_max_tokens=False)
                words = sum(len(json.dumps(m["content"]).split()) for m in merged)
                h.send_json(200, {"input_tokens": 3 + words})
            elif req.path == "/v1/models" and req.method == "GET":
                self._models(h, req)
            else:
                h.send_json(404, error_body("not_found_error", f"Not found: {req.method} {req.path}"))
        except Invalid as e:
            h.send_json(e.status, error_body(e.type_, str(e)))

    @staticmethod
    def _json(req: RecordedRequest) -> dict:
        try:
            body = json.loads(req.body)
        except ValueError:
            raise Invalid("There was an issue with your request body: it is not valid JSON") from None
        if not isinstance(body, dict):
            raise Invalid("The request body must be a JSON object")
        return body

    def _models(self, h: Handler, req: RecordedRequest) -> None:
        limit = int((req.query.get("limit") or ["20"])[0])
        if not 1 <= limit <= 1000:
            raise Invalid("limit: Input should be less than or equal to 1000")
        after = (req.query.get("after_id") or [None])[0]
        start = 0
        if after is not None:
            if after not in self.models:
                raise Invalid(f"after_id: no model {after}", 404, "not_found_error")
            start = self.models.index(after) + 1
        limit = min(limit, self.page_cap)
        page = self.models[start:start + limit]
        h.send_json(200, {
            "data": [{"type": "model", "id": m, "display_name": m.replace("-", " ").title(),
                      "created_at": "2025-09-29T00:00:00Z"} for m in page],
            "has_more": start + limit < len(self.models),
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        })

    def _messages(self, h: Handler, req: RecordedRequest) -> None:
        body = self._json(req)
        merged = validate_messages(body, need_max_tokens=True)
        reply = self.next_reply()
        with self._lock:
            self.counter += 1
            n = self.counter
        msg_id = f"msg_fake{n:04d}"
        text = reply.text_for(last_user_text(merged))
        tool_ids = [f"toolu_fake{n:02d}{k}" for k in range(len(reply.tool_calls))]
        stop_reason = STOP_REASONS[reply.finish_reason()]
        usage = {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens,
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": reply.cached_tokens}
        if not body.get("stream"):
            content: list[dict] = []
            if text:
                content.append({"type": "text", "text": text})
            for tid, (name, args) in zip(tool_ids, reply.tool_calls):
                content.append({"type": "tool_use", "id": tid, "name": name, "input": args})
            h.send_json(200, {"id": msg_id, "type": "message", "role": "assistant", "model": body["model"],
                              "content": content, "stop_reason": stop_reason, "stop_sequence": None,
                              "usage": usage}, {"request-id": f"req_fake{n:04d}"})
            return

        def event(name: str, data: dict) -> None:
            h.write_chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        h.start_stream({"request-id": f"req_fake{n:04d}"})
        event("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": body["model"], "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": reply.input_tokens, "output_tokens": 1,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": reply.cached_tokens}}})
        index = 0
        if text:
            event("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}})
            event("ping", {"type": "ping"})
            for k, piece in enumerate(split3(text)):
                event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": piece}})
                if k == 0:
                    h.hold()
                if reply.stream_cut and k == 0:
                    h.cut()
                    return
                if reply.stream_error and k == 0:
                    event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                    h.end_stream()
                    return
            event("content_block_stop", {"type": "content_block_stop", "index": 0})
            index = 1
        for tid, (name, args) in zip(tool_ids, reply.tool_calls):
            event("content_block_start", {"type": "content_block_start", "index": index,
                                          "content_block": {"type": "tool_use", "id": tid, "name": name,
                                                            "input": {}}})
            raw = json.dumps(args)
            cut = len(raw) // 2
            for part in ("", raw[:cut], raw[cut:]):
                event("content_block_delta", {"type": "content_block_delta", "index": index,
                                              "delta": {"type": "input_json_delta", "partial_json": part}})
            event("content_block_stop", {"type": "content_block_stop", "index": index})
            index += 1
        event("message_delta", {"type": "message_delta",
                                 "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                 "usage": {"output_tokens": reply.output_tokens}})
        event("message_stop", {"type": "message_stop"})
        h.end_stream()


def anthropic_error(type_: str, message: str) -> dict:
    """An Anthropic error body, for scripting."""
    return error_body(type_, message)
