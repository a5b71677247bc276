"""Fakes for the security tests (Python standard library only).

* ``AgentModel`` - one HTTP server that plays an LLM in an agent loop, in two documented
  wire formats: OpenAI Chat Completions (``POST /v1/chat/completions``) and Anthropic
  Messages (``POST /v1/messages``), JSON or SSE. When ``tool_call`` is set it answers with a
  call of that tool (OpenAI ``tool_calls`` with JSON-string ``arguments``, streamed as
  ``delta.tool_calls`` pieces; Anthropic ``tool_use`` blocks, streamed as
  ``input_json_delta`` events), otherwise with text. ``pause_in_arguments`` stops a stream
  in the middle of the arguments for that many seconds. Every request is recorded.
  It also speaks Gemini ``generateContent`` / ``streamGenerateContent?alt=sse`` under
  ``/v1beta/models/{model}:…`` (``functionCall`` parts, sent whole as Gemini does).
* ``JwksServer`` - serves a JSON Web Key Set at ``/jwks.json`` and counts fetches.
* ``FakeKubeApi`` - the ``authentication.k8s.io/v1`` ``TokenReview`` API
  (``POST /apis/authentication.k8s.io/v1/tokenreviews``) of a Kubernetes API server, with a
  table of known tokens; records every review and the caller's bearer token.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import urlsplit

from fakes import serving


@dataclass
class Recorded:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class _Server:
    """A threaded HTTP/1.1 server on 127.0.0.1 whose handler calls ``self.handle``."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None

    def start(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = serving.read_body(self)
                req = Recorded(self.command, urlsplit(self.path).path, list(self.headers.items()), body)
                with owner.lock:
                    owner.requests.append(req)
                try:
                    owner.handle(self, req)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_POST = do_DELETE = do_PUT = do_PATCH = do_TRACE = do_GET

        self._server = serving.serve(Handler)
        return self

    def stop(self) -> None:
        if self._server is not None:
            serving.close(self._server)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, h: BaseHTTPRequestHandler, req: Recorded) -> None:  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def send_json(h: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()

    @staticmethod
    def start_sse(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream; charset=utf-8")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.flush()

    @staticmethod
    def chunk(h: BaseHTTPRequestHandler, data: bytes) -> None:
        h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        h.wfile.flush()


class AgentModel(_Server):
    """A model in an agent loop, speaking OpenAI Chat Completions and Anthropic Messages."""

    def __init__(self) -> None:
        super().__init__()
        self.tool_call: Optional[tuple[str, Any]] = None  # (name, arguments as JSON-able)
        self.raw_arguments: Optional[str] = None  # send these argument bytes instead
        self.text = "I will take care of that."
        self.pause_in_arguments = 0.0
        self.streams_finished = 0
        # What `GET /v1/models` lists (more than the gateway's providers configure).
        self.openai_models = ["gpt-test", "gpt-test-mini", "o3-test"]
        self.anthropic_models = ["claude-test", "claude-other"]

    def calls(self, path: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def _args_text(self) -> str:
        assert self.tool_call is not None
        return self.raw_arguments if self.raw_arguments is not None else json.dumps(self.tool_call[1])

    def handle(self, h: BaseHTTPRequestHandler, req: Recorded) -> None:
        payload = req.json or {}
        if req.path == "/v1/chat/completions":
            (self._openai_stream if payload.get("stream") else self._openai)(h, payload)
        elif req.path == "/v1/messages":
            (self._anthropic_stream if payload.get("stream") else self._anthropic)(h, payload)
        elif req.path == "/v1/models" and req.header("anthropic-version"):
            # Anthropic's Models API (`GET /v1/models`), as its reference documents it.
            models = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-05-14T00:00:00Z"}
                      for m in self.anthropic_models]
            self.send_json(h, 200, {"data": models, "has_more": False,
                                    "first_id": models[0]["id"], "last_id": models[-1]["id"]})
        elif req.path == "/v1/models":
            # OpenAI's `GET /v1/models`.
            self.send_json(h, 200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 1686935002, "owned_by": "system"}
                for m in self.openai_models]})
        elif req.path.startswith("/v1beta/models/") and ":" in req.path:
            model, method = req.path[len("/v1beta/models/"):].split(":", 1)
            if method == "streamGenerateContent":
                self._gemini_stream(h, model)
            else:
                self.send_json(h, 200, self._gemini_response(model, text=True, call=True))
        else:
            self.send_json(h, 404, {"error": {"message": f"no route {req.path}", "type": "invalid_request_error",
                                              "param": None, "code": None}})

    # ------------------------------------------------------------------ OpenAI
    def _openai(self, h: BaseHTTPRequestHandler, payload: dict) -> None:
        message: dict[str, Any] = {"role": "assistant", "content": self.text, "refusal": None}
        finish = "stop"
        if self.tool_call:
            message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [{
                "id": "call_model_1", "type": "function",
                "function": {"name": self.tool_call[0], "arguments": self._args_text()}}]}
            finish = "tool_calls"
        self.send_json(h, 200, {
            "id": "chatcmpl-agent1", "object": "chat.completion", "created": int(time.time()),
            "model": payload.get("model"), "system_fingerprint": "fp_agent",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": 59},
        })

    def _openai_stream(self, h: BaseHTTPRequestHandler, payload: dict) -> None:
        created = int(time.time())
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))

        def sse(delta: dict, finish: Optional[str] = None) -> None:
            c = {"id": "chatcmpl-agent2", "object": "chat.completion.chunk", "created": created,
                 "model": payload.get("model"), "system_fingerprint": "fp_agent",
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            self.chunk(h, f"data: {json.dumps(c)}\n\n".encode())

        self.start_sse(h)
        sse({"role": "assistant", "content": ""})
        for piece in ("I will ", "send it now."):
            sse({"content": piece})
        if self.tool_call:
            args = self._args_text()
            half = len(args) // 2
            sse({"tool_calls": [{"index": 0, "id": "call_model_1", "type": "function",
                                 "function": {"name": self.tool_call[0], "arguments": ""}}]})
            sse({"tool_calls": [{"index": 0, "function": {"arguments": args[:half]}}]})
            if self.pause_in_arguments:
                time.sleep(self.pause_in_arguments)
            sse({"tool_calls": [{"index": 0, "function": {"arguments": args[half:]}}]})
            sse({}, "tool_calls")
        else:
            sse({}, "stop")
        if include_usage:
            c = {"id": "chatcmpl-agent2", "object": "chat.completion.chunk", "created": created,
                 "model": payload.get("model"), "choices": [],
                 "usage": {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": 59}}
            self.chunk(h, f"data: {json.dumps(c)}\n\n".encode())
        self.chunk(h, b"data: [DONE]\n\n")
        self.chunk(h, b"")
        with self.lock:
            self.streams_finished += 1

    # ------------------------------------------------------------------ Gemini
    def _gemini_response(self, model: str, text: bool, call: bool) -> dict:
        parts: list[dict] = []
        if text:
            parts.append({"text": self.text})
        if call and self.tool_call:
            parts.append({"functionCall": {"name": self.tool_call[0], "args": self.tool_call[1]}})
        return {
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 42, "candidatesTokenCount": 17, "totalTokenCount": 59},
            "modelVersion": model,
        }

    def _gemini_stream(self, h: BaseHTTPRequestHandler, model: str) -> None:
        self.start_sse(h)
        first = self._gemini_response(model, text=True, call=False)
        first["candidates"][0].pop("finishReason")
        self.chunk(h, f"data: {json.dumps(first)}\r\n\r\n".encode())
        if self.pause_in_arguments:
            time.sleep(self.pause_in_arguments)  # the model "thinks" before its function call
        self.chunk(h, f"data: {json.dumps(self._gemini_response(model, text=False, call=True))}\r\n\r\n".encode())
        self.chunk(h, b"")

    # ------------------------------------------------------------------ Anthropic
    def _anthropic(self, h: BaseHTTPRequestHandler, payload: dict) -> None:
        content: list[dict] = [{"type": "text", "text": self.text}]
        stop = "end_turn"
        if self.tool_call:
            content.append({"type": "tool_use", "id": "toolu_model_1", "name": self.tool_call[0],
                            "input": json.loads(self._args_text()) if self.raw_arguments is None else {}})
            stop = "tool_use"
        self.send_json(h, 200, {
            "id": "msg_agent1", "type": "message", "role": "assistant", "model": payload.get("model"),
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": 42, "output_tokens": 17},
        })

    def _anthropic_stream(self, h: BaseHTTPRequestHandler, payload: dict) -> None:
        def ev(name: str, data: dict) -> None:
            self.chunk(h, f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        self.start_sse(h)
        ev("message_start", {"type": "message_start", "message": {
            "id": "msg_agent2", "type": "message", "role": "assistant", "content": [],
            "model": payload.get("model"), "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 42, "output_tokens": 1}}})
        ev("content_block_start", {"type": "content_block_start", "index": 0,
                                   "content_block": {"type": "text", "text": ""}})
        ev("ping", {"type": "ping"})
        ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": self.text}})
        ev("content_block_stop", {"type": "content_block_stop", "index": 0})
        stop = "end_turn"
        if self.tool_call:
            args = self._args_text()
            half = len(args) // 2
            ev("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
                "type": "tool_use", "id": "toolu_model_1", "name": self.tool_call[0], "input": {}}})
            ev("content_block_delta", {"type": "content_block_delta", "index": 1,
                                       "delta": {"type": "input_json_delta", "partial_json": args[:half]}})
            if self.pause_in_arguments:
                time.sleep(self.pause_in_arguments)
            ev("content_block_delta", {"type": "content_block_delta", "index": 1,
                                       "delta": {"type": "input_json_delta", "partial_json": args[half:]}})
            ev("content_block_stop", {"type": "content_block_stop", "index": 1})
            stop = "tool_use"
        ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                             "usage": {"output_tokens": 17}})
        ev("message_stop", {"type": "message_stop"})
        self.chunk(h, b"")
        with self.lock:
            self.streams_finished += 1


class JwksServer(_Server):
    """Serves ``self.jwks`` at ``/jwks.json``."""

    def __init__(self) -> None:
        super().__init__()
        self.jwks: dict = {"keys": []}

    @property
    def uri(self) -> str:
        return f"{self.url}/jwks.json"

    def fetches(self) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r.path == "/jwks.json")

    def handle(self, h: BaseHTTPRequestHandler, req: Recorded) -> None:
        if req.path == "/jwks.json":
            self.send_json(h, 200, self.jwks)
        else:
            self.send_json(h, 404, {"error": "not found"})


class FakeKubeApi(_Server):
    """The TokenReview API of a Kubernetes API server.

    ``tokens`` maps a token to ``(username, audiences)``; a review of an unknown token, or of a
    token whose audiences do not include one of those asked, answers ``authenticated: false``.
    """

    PATH = "/apis/authentication.k8s.io/v1/tokenreviews"

    def __init__(self, gateway_token: str) -> None:
        super().__init__()
        self.gateway_token = gateway_token
        self.tokens: dict[str, tuple[str, list[str]]] = {}

    def reviews(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path == self.PATH]

    def kubeconfig(self) -> str:
        return (
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: fake\n  cluster: {{server: \"{self.url}\"}}\n"
            f"users:\n- name: portcullis\n  user: {{token: {self.gateway_token}}}\n"
            "contexts:\n- name: fake\n  context: {cluster: fake, user: portcullis, namespace: ai}\n"
            "current-context: fake\n"
        )

    def handle(self, h: BaseHTTPRequestHandler, req: Recorded) -> None:
        if req.method != "POST" or req.path != self.PATH:
            self.send_json(h, 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource"})
            return
        if req.header("Authorization") != f"Bearer {self.gateway_token}":
            self.send_json(h, 401, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "reason": "Unauthorized", "code": 401, "message": "Unauthorized"})
            return
        review = req.json or {}
        spec = review.get("spec") or {}
        token = spec.get("token") or ""
        asked = spec.get("audiences") or ["https://kubernetes.default.svc"]
        status: dict[str, Any] = {"authenticated": False, "error": "token not valid"}
        known = self.tokens.get(token)
        if known is not None:
            username, audiences = known
            granted = [a for a in asked if a in audiences]
            if granted:
                ns_name = username.split(":")[2:]
                status = {
                    "authenticated": True,
                    "user": {"username": username, "uid": "uid-" + "-".join(ns_name),
                             "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns_name[0]}",
                                        "system:authenticated"]},
                    "audiences": granted,
                }
            else:
                status = {"authenticated": False, "error": "token audiences do not match"}
        self.send_json(h, 201, {
            "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        })
