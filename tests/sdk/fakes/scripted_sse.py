"""A fake upstream that replays a scripted ``text/event-stream`` piece by piece,
with stalls between pieces (Python standard library only).

Any ``POST`` (or ``GET``) answers 200 with ``Content-Type: text/event-stream``
and chunked transfer encoding, then writes the scripted pieces in order, each
flushed on its own, sleeping ``stall`` seconds where the script says so. The
script is raw bytes, so a test decides exactly where the upstream goes quiet: between
two events, or in the middle of one.

The streams the tests script follow each provider's documented format:

* OpenAI Chat Completions: ``data: {chat.completion.chunk}`` events, ending
  with ``data: [DONE]``.
* Anthropic Messages: ``event: <type>`` + ``data: {...}`` pairs
  (``message_start``, ``content_block_start``, ``content_block_delta``,
  ``content_block_stop``, ``message_delta``, ``message_stop``).
* Gemini ``streamGenerateContent?alt=sse``: ``data: {GenerateContentResponse}``
  events separated by CRLF CRLF.

Every request is recorded (method, path, headers, body).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Union

from fakes import serving

#: A script item: bytes to write, or a float = seconds to stay quiet.
Piece = Union[bytes, float]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class ScriptedSSE:
    def __init__(self) -> None:
        self.script: list[Piece] = []
        self.requests: list[Recorded] = []
        self.completed = 0
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None

    def start(self) -> "ScriptedSSE":
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = serving.serve(Handler, server_class=_Server)
        return self

    def stop(self) -> None:
        if self._server is not None:
            serving.close(self._server)
            self._server = None

    @property
    def origin(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def payload(self) -> bytes:
        """Every byte the script writes, stalls left out."""
        return b"".join(p for p in self.script if isinstance(p, bytes))


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up on a kept-alive connection is not news."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: ScriptedSSE
    server_version = "FakeSSE/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = serving.read_body(self)
        with self.owner._lock:
            self.owner.requests.append(Recorded(self.command, self.path, dict(self.headers.items()), body))
            script = list(self.owner.script)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            for piece in script:
                if isinstance(piece, (int, float)):
                    time.sleep(piece)
                    continue
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            with self.owner._lock:
                self.owner.completed += 1
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST


# ----------------------------------------------------------------- documented streams
def openai_chunk(content: Optional[str], finish: Optional[str] = None, model: str = "gpt-test",
                 role: bool = False) -> bytes:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    obj = {
        "id": "chatcmpl-ka1", "object": "chat.completion.chunk", "created": 1767225600, "model": model,
        "system_fingerprint": "fp_ka",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


OPENAI_DONE = b"data: [DONE]\n\n"


def anthropic_event(obj: dict[str, Any]) -> bytes:
    return b"event: " + obj["type"].encode() + b"\ndata: " + json.dumps(obj).encode() + b"\n\n"


def anthropic_stream(texts: list[str], stall: float, model: str = "claude-test") -> list[Piece]:
    """A Messages stream that stays quiet for `stall` seconds after its first text delta."""
    pieces: list[Piece] = [
        anthropic_event({"type": "message_start", "message": {
            "id": "msg_ka1", "type": "message", "role": "assistant", "content": [], "model": model,
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        anthropic_event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ]
    for i, text in enumerate(texts):
        pieces.append(anthropic_event({"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": text}}))
        if i == 0:
            pieces.append(stall)
    pieces += [
        anthropic_event({"type": "content_block_stop", "index": 0}),
        anthropic_event({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                         "usage": {"output_tokens": len(texts)}}),
        anthropic_event({"type": "message_stop"}),
    ]
    return pieces


def gemini_event(text: str, finish: Optional[str] = None) -> bytes:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    obj = {"candidates": [candidate], "modelVersion": "gemini-test",
           "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7}}
    return b"data: " + json.dumps(obj).encode() + b"\r\n\r\n"
