"""A fake OpenAI (and Azure OpenAI deployments) upstream that fails on command.

``FailingOpenAI`` is a ``FakeOpenAI`` whose chat requests take their behaviour from a queue of
faults (one per request, then the normal answer):

* ``Fault.status(500)`` / ``Fault.status(429, retry_after="2")`` / ``Fault.quota()`` - an
  error answer in OpenAI's shape;
* ``Fault.reset()`` - the connection is closed without an answer;
* ``Fault.hang(seconds)`` - nothing at all for that long (then the normal answer);
* ``Fault.hang_stream(seconds)`` - a stream's headers, then silence, then the stream;
* ``Fault.break_after_first()`` - a stream's first content event, then a cut connection.

Besides ``/v1/chat/completions`` it serves Azure's deployment path
``/openai/deployments/{deployment}/chat/completions?api-version=…`` (the model is the
deployment), so two of them make a pool of Azure regions.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Optional

from fakes.openai_upstream import FakeOpenAI, _Handler
from fakes.serving import RecordedRequest


@dataclass
class Fault:
    kind: str
    status_code: int = 500
    body: Optional[dict] = None
    headers: dict = field(default_factory=dict)
    seconds: float = 0.0

    @staticmethod
    def status(code: int, retry_after: Optional[str] = None, code_name: str = "server_error") -> "Fault":
        headers = {"retry-after": retry_after} if retry_after is not None else {}
        kind = "rate_limit_exceeded" if code == 429 else code_name
        body = {"error": {"message": f"scripted {code}", "type": kind, "param": None, "code": kind}}
        return Fault("status", code, body, headers)

    @staticmethod
    def quota() -> "Fault":
        body = {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                          "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}
        return Fault("status", 429, body)

    @staticmethod
    def reset() -> "Fault":
        return Fault("reset")

    @staticmethod
    def hang(seconds: float) -> "Fault":
        return Fault("hang", seconds=seconds)

    @staticmethod
    def hang_stream(seconds: float) -> "Fault":
        return Fault("hang_stream", seconds=seconds)

    @staticmethod
    def break_after_first() -> "Fault":
        return Fault("break_after_first")


class FailingOpenAI(FakeOpenAI):
    """``FakeOpenAI`` with a queue of faults for chat requests."""

    def __init__(self, name: str = "fake") -> None:
        super().__init__()
        self.name = name
        self.faults: deque[Fault] = deque()

    def fail(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def heal(self) -> None:
        with self._lock:
            self.faults.clear()

    def next_fault(self) -> Optional[Fault]:
        with self._lock:
            return self.faults.popleft() if self.faults else None

    def chats(self) -> list[RecordedRequest]:
        return [r for r in self.all_requests() if r.path.endswith("/chat/completions")]

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(_FailingHandler):
            owner = fake

        return Handler

    @staticmethod
    def reply_for(body) -> str:  # noqa: ANN001 - as FakeOpenAI
        return FakeOpenAI.reply_for(body)


class _FailingHandler(_Handler):
    owner: FailingOpenAI

    def _route(self, req: RecordedRequest) -> None:
        is_chat = req.method == "POST" and req.path.endswith("/chat/completions")
        if not is_chat:
            super()._route(req)
            return
        try:
            payload = json.loads(req.body)
        except ValueError:
            self._error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
            return
        if req.path.startswith("/openai/deployments/"):
            if req.header("api-key") is None or "api-version" not in req.query:
                self._error(401, "Access denied due to missing api-key or api-version.", "invalid_request_error")
                return
            payload["model"] = req.path.split("/")[3]
        elif req.path != "/v1/chat/completions":
            self._error(404, f"Unknown request URL: {req.method} {req.path}.", "invalid_request_error")
            return
        fault = self.owner.next_fault()
        streaming = bool(payload.get("stream"))
        if fault is None:
            if streaming:
                self._stream_chat(payload)
            else:
                self._chat(payload)
            return
        if fault.kind == "status":
            self._send_json(fault.status_code, fault.body, fault.headers)
        elif fault.kind == "reset":
            self._reset()
        elif fault.kind == "hang":
            time.sleep(fault.seconds)
            self._reset()
        elif fault.kind == "hang_stream":
            self._stream_head()
            time.sleep(fault.seconds)
            self._reset()
        elif fault.kind == "break_after_first":
            self._stream_head()
            self._sse({"id": "chatcmpl-broken", "object": "chat.completion.chunk", "created": int(time.time()),
                       "model": payload.get("model"),
                       "choices": [{"index": 0, "delta": {"role": "assistant", "content": "partial"},
                                    "logprobs": None, "finish_reason": None}]})
            time.sleep(0.2)
            self._reset()

    def _stream_head(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _reset(self) -> None:
        """Close with a TCP reset, in the middle of whatever was being sent."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
