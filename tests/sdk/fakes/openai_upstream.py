"""A fake OpenAI upstream for end-to-end tests (Python standard library only).

It speaks the documented OpenAI wire format on ``/v1``:

* ``POST /v1/chat/completions`` - a ``chat.completion`` object with ``usage``,
  or, with ``"stream": true``, a ``text/event-stream`` of ``chat.completion.chunk``
  objects ending in ``data: [DONE]`` (``stream_options.include_usage`` adds the
  final usage chunk whose ``choices`` is empty).
* ``GET /v1/models`` - a ``list`` of ``model`` objects.
* ``POST /v1/embeddings`` - a ``list`` of ``embedding`` objects (float or base64,
  ``dimensions`` long when asked), ``usage`` last as the API sends it.

Every request is recorded (method, path, query, headers, body) so that tests can
assert on what the gateway really sent. A test can script the next response
(status, body, headers, delay), slow a stream down, or hold a stream after its
first content chunk until the test says so (``stream_gate``).
"""

from __future__ import annotations

import base64
import json
import struct
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

from collections import deque

from fakes.base import Reply
from fakes.serving import RecordedRequest, ScriptedServer


DEFAULT_MODELS = ["gpt-test", "gpt-test-mini", "text-embedding-3-small", "other-model"]


class FakeOpenAI(ScriptedServer):
    """A threaded OpenAI-compatible HTTP/1.1 server on 127.0.0.1 (port 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.models: list[str] = list(DEFAULT_MODELS)
        # Streaming behaviour (pacing and the gate come from ScriptedServer).
        self.stream_pieces: Optional[list[str]] = None  # default: derived from the reply
        self.gate_waited: bool = False
        # Scripted answers (text, tool calls, usage) for the next chat requests; empty: echo.
        self.replies: deque[Reply] = deque()
        self.calls_made = 0
        # Like the real API (behind its CDN): gzip JSON answers when the client accepts it.
        self.gzip_json: bool = False

    # ----------------------------------------------------------------- control
    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(_Handler):
            owner = fake

        return Handler

    @property
    def base_url(self) -> str:
        """The provider ``baseUrl`` to configure (includes ``/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def queue(self, *replies: Reply) -> None:
        """What the next chat requests answer, in order (then the default echo)."""
        with self._lock:
            self.replies.extend(replies)

    def next_reply(self) -> Optional[Reply]:
        with self._lock:
            return self.replies.popleft() if self.replies else None

    def tool_calls(self, reply: Reply) -> list[dict]:
        with self._lock:
            self.calls_made += 1
            n = self.calls_made
        return [{"id": f"call_fake{n:02d}{i}", "type": "function",
                 "function": {"name": name, "arguments": json.dumps(args)}}
                for i, (name, args) in enumerate(reply.tool_calls)]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._script.clear()

    # ----------------------------------------------------------------- internals
    @staticmethod
    def reply_for(body: Any) -> str:
        """The assistant text the fake answers with: echoes the last user message."""
        last = ""
        for m in (body or {}).get("messages", []) or []:
            if isinstance(m, dict) and m.get("role") == "user":
                c = m.get("content")
                if isinstance(c, list):
                    c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
                last = str(c)
        return f"echo: {last}"


def scripted_usage(reply: Reply) -> dict:
    """Chat Completions ``usage`` as the API reports it: ``prompt_tokens`` includes the cached
    tokens that ``prompt_tokens_details.cached_tokens`` names (``Reply.input_tokens`` is the
    whole prompt here)."""
    return {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
            "prompt_tokens_details": {"cached_tokens": reply.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FakeOpenAI  # set by subclass
    server_version = "FakeOpenAI/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # Every method goes through the same handler.
    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    # ---------------------------------------------------------------- request
    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until blank line
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()  # CRLF after chunk
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        body = self._read_body()
        parts = urlsplit(self.path)
        req = RecordedRequest(
            method=self.command,
            target=self.path,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=list(self.headers.items()),
            body=body,
            time=time.monotonic(),
        )
        scripted = self.owner._record(req)
        try:
            if scripted is not None:
                if scripted.delay:
                    time.sleep(scripted.delay)
                self._send_json(scripted.status, scripted.body, scripted.headers)
                return
            self._route(req)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self, req: RecordedRequest) -> None:
        if req.path == "/v1/chat/completions" and req.method == "POST":
            try:
                payload = json.loads(req.body)
            except ValueError:
                self._error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
                return
            if payload.get("stream"):
                self._stream_chat(payload)
            else:
                self._chat(payload)
        elif req.path == "/v1/models" and req.method == "GET":
            now = int(time.time())
            self._send_json(200, {
                "object": "list",
                "data": [{"id": m, "object": "model", "created": now, "owned_by": "fake"} for m in self.owner.models],
            })
        elif req.path == "/v1/responses" and req.method == "POST":
            self._responses(json.loads(req.body))
        elif req.path == "/v1/embeddings" and req.method == "POST":
            self._embeddings(json.loads(req.body))
        else:
            self._error(404, f"Unknown request URL: {req.method} {req.path}.", "invalid_request_error",
                        code="unknown_url")

    # ---------------------------------------------------------------- responses
    def _send_json(self, status: int, body: Any, headers: Optional[dict[str, str]] = None) -> None:
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            ctype = "application/json"
        elif isinstance(body, str):
            data = body.encode()
            ctype = "text/plain"
        elif body is None:
            data = b""
            ctype = "application/json"
        else:
            data = bytes(body)
            ctype = "application/octet-stream"
        hdrs = {"Content-Type": ctype, **(headers or {})}
        if (getattr(self.owner, "gzip_json", False) and ctype == "application/json" and data
                and "gzip" in (self.headers.get("Accept-Encoding") or "")):
            import gzip
            data = gzip.compress(data)
            hdrs["Content-Encoding"] = "gzip"
        self.send_response(status)
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _error(self, status: int, message: str, type_: str, code: Optional[str] = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": type_, "param": None, "code": code}})

    def _chat(self, payload: dict) -> None:
        scripted = self.owner.next_reply()
        if scripted is not None:
            self._scripted_chat(payload, scripted)
            return
        reply = FakeOpenAI.reply_for(payload)
        self._send_json(200, {
            "id": "chatcmpl-fake0001",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("model"),
            "system_fingerprint": "fp_fake",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
        }, {"x-request-id": "req_fake_0001", "openai-processing-ms": "5"})

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _sse(self, obj: Any) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj)
        self._write_chunk(f"data: {data}\n\n".encode())

    def _scripted_chat(self, payload: dict, reply: Reply) -> None:
        text = reply.text_for(FakeOpenAI.reply_for(payload)[len("echo: "):])
        calls = self.owner.tool_calls(reply)
        finish = {"tool": "tool_calls", "stop": "stop", "length": "length"}.get(reply.finish_reason(), "stop")
        self._send_json(200, {
            "id": "chatcmpl-fake0003", "object": "chat.completion", "created": int(time.time()),
            "model": payload.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text or None, "refusal": None,
                                                 **({"tool_calls": calls} if calls else {})},
                         "logprobs": None, "finish_reason": finish}],
            "usage": scripted_usage(reply),
        })

    def _scripted_stream(self, payload: dict, reply: Reply) -> None:
        text = reply.text_for(FakeOpenAI.reply_for(payload)[len("echo: "):])
        calls = self.owner.tool_calls(reply)
        finish = {"tool": "tool_calls", "stop": "stop", "length": "length"}.get(reply.finish_reason(), "stop")
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict, finish_reason: Optional[str] = None) -> dict:
            return {"id": "chatcmpl-fake0004", "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": payload.get("model"),
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._sse(chunk({"role": "assistant", "content": ""}))
        n = len(text)
        for piece in [text[: n // 2], text[n // 2:]] if text else []:
            if piece:
                self._sse(chunk({"content": piece}))
        for i, call in enumerate(calls):
            args = call["function"]["arguments"]
            self._sse(chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                             "function": {"name": call["function"]["name"], "arguments": ""}}]}))
            for j in range(0, len(args), 5):
                self._sse(chunk({"tool_calls": [{"index": i, "function": {"arguments": args[j:j + 5]}}]}))
        self._sse(chunk({}, finish))
        if include_usage:
            self._sse({"id": "chatcmpl-fake0004", "object": "chat.completion.chunk", "created": int(time.time()),
                       "model": payload.get("model"), "choices": [],
                       "usage": scripted_usage(reply)})
        self._sse("[DONE]")
        with self.owner._lock:
            self.owner.stream_completed += 1
        self._write_chunk(b"")

    def _stream_chat(self, payload: dict) -> None:
        owner = self.owner
        scripted = owner.next_reply()
        if scripted is not None:
            self._scripted_stream(payload, scripted)
            return
        reply = FakeOpenAI.reply_for(payload)
        pieces = owner.stream_pieces or [reply[: len(reply) // 3], reply[len(reply) // 3: 2 * len(reply) // 3],
                                         reply[2 * len(reply) // 3:]]
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        created = int(time.time())
        model = payload.get("model")

        def chunk(delta: dict, finish: Optional[str] = None) -> dict:
            c = {
                "id": "chatcmpl-fake0002", "object": "chat.completion.chunk", "created": created,
                "model": model, "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                c["usage"] = None
            return c

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", "req_fake_0002")
        self.end_headers()
        self.wfile.flush()

        self._sse(chunk({"role": "assistant", "content": "", "refusal": None}))
        for i, piece in enumerate(pieces):
            if i > 0:
                if i == 1 and owner.stream_gate is not None:
                    owner.gate_waited = True
                    if not owner.stream_gate.wait(owner.gate_timeout):
                        owner.gate_timed_out = True
                if owner.chunk_delay:
                    time.sleep(owner.chunk_delay)
            self._sse(chunk({"content": piece}))
        if owner.chunk_delay:
            time.sleep(owner.chunk_delay)
        self._sse(chunk({}, "stop"))
        if include_usage:
            self._sse({
                "id": "chatcmpl-fake0002", "object": "chat.completion.chunk", "created": created,
                "model": model, "system_fingerprint": "fp_fake", "choices": [],
                "usage": {"prompt_tokens": 11, "completion_tokens": len(pieces), "total_tokens": 11 + len(pieces)},
            })
        self._sse("[DONE]")
        # Count before the terminating chunk: the client cannot finish reading before it, so a
        # test that checks the count right after its stream ends never races the fake.
        with owner._lock:
            owner.stream_completed += 1
        self._write_chunk(b"")  # terminating zero-length chunk

    def _responses(self, payload: dict) -> None:
        """``POST /v1/responses``: a ``response`` (or its event stream) from the reply queue; the
        default echoes the last user text. Refuses a body without ``model`` or ``input``."""
        if not payload.get("model") or payload.get("input") in (None, "", []):
            self._error(400, "Missing required parameter: 'model' or 'input'.", "invalid_request_error")
            return
        inp = payload["input"]
        last = inp if isinstance(inp, str) else ""
        if isinstance(inp, list):
            for item in inp:
                if isinstance(item, dict) and item.get("role") == "user":
                    c = item.get("content")
                    last = c if isinstance(c, str) else " ".join(p.get("text", "") for p in c or [])
        reply = self.owner.next_reply() or Reply(input_tokens=13, output_tokens=5)
        text = reply.text_for(last)
        calls = self.owner.tool_calls(reply)
        output: list[dict] = []
        if text:
            output.append({"type": "message", "id": "msg_fake01", "status": "completed", "role": "assistant",
                           "content": [{"type": "output_text", "text": text, "annotations": []}]})
        for i, c in enumerate(calls):
            output.append({"type": "function_call", "id": f"fc_fake0{i}", "call_id": c["id"],
                           "name": c["function"]["name"], "arguments": c["function"]["arguments"],
                           "status": "completed"})
        usage = {"input_tokens": reply.input_tokens, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": reply.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": reply.input_tokens + reply.output_tokens}
        response = {"id": "resp_fake01", "object": "response", "created_at": int(time.time()),
                    "status": "completed", "model": payload["model"], "output": output, "usage": usage,
                    "store": payload.get("store", True), "tools": payload.get("tools", []),
                    "parallel_tool_calls": True, "tool_choice": "auto", "error": None,
                    "incomplete_details": None}
        if not payload.get("stream"):
            self._send_json(200, response)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        seq = 0

        def ev(kind: str, data: dict) -> None:
            nonlocal seq
            data = {"type": kind, "sequence_number": seq, **data}
            seq += 1
            self._write_chunk(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())

        ev("response.created", {"response": {**response, "status": "in_progress", "output": [], "usage": None}})
        for i, item in enumerate(output):
            if item["type"] == "message":
                ev("response.output_item.added", {"output_index": i, "item": {**item, "content": [],
                                                                             "status": "in_progress"}})
                ev("response.content_part.added", {"item_id": item["id"], "output_index": i, "content_index": 0,
                                                   "part": {"type": "output_text", "text": "", "annotations": []}})
                ev("response.output_text.delta", {"item_id": item["id"], "output_index": i, "content_index": 0,
                                                  "delta": text})
                ev("response.output_text.done", {"item_id": item["id"], "output_index": i, "content_index": 0,
                                                 "text": text})
                ev("response.content_part.done", {"item_id": item["id"], "output_index": i, "content_index": 0,
                                                  "part": item["content"][0]})
            else:
                ev("response.output_item.added", {"output_index": i, "item": {**item, "arguments": "",
                                                                             "status": "in_progress"}})
                ev("response.function_call_arguments.delta", {"item_id": item["id"], "output_index": i,
                                                              "delta": item["arguments"]})
                ev("response.function_call_arguments.done", {"item_id": item["id"], "output_index": i,
                                                             "arguments": item["arguments"]})
            ev("response.output_item.done", {"output_index": i, "item": item})
        ev("response.completed", {"response": response})
        with self.owner._lock:
            self.owner.stream_completed += 1
        self._write_chunk(b"")

    def _embeddings(self, payload: dict) -> None:
        inputs = payload.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        data = []
        for i, text in enumerate(inputs or []):
            # `dimensions` (text-embedding-3 models) sets the vector's length.
            dims = int(payload.get("dimensions") or 4)
            vec = ([float(len(str(text))), 0.5, -0.25, float(i)] + [0.125] * dims)[:dims]
            if payload.get("encoding_format") == "base64":
                emb: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            else:
                emb = vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        self._send_json(200, {
            "object": "list", "data": data, "model": payload.get("model"),
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
        })
