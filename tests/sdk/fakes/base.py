"""Shared machinery of the fake upstreams (Python standard library only).

A ``FakeUpstream`` is a threaded HTTP/1.1 server on 127.0.0.1 (port 0) that records every
request (method, target, headers, body) and answers either with a scripted response
(``script``) or through its provider-specific ``route``. Generation endpoints take their
answer from a queue of ``Reply`` objects (``queue``), so a test decides the text, the tool
calls, the finish reason and the usage numbers the provider reports, and can break a stream
off with the provider's own mid-stream error event.

Each provider module renders a ``Reply`` in that provider's documented wire format.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

from fakes.serving import RecordedRequest, ScriptedResponse, ScriptedServer

__all__ = ["FakeUpstream", "Handler", "RecordedRequest", "Reply", "ScriptedResponse"]


@dataclass
class Reply:
    """What the model "says" next, provider-neutral.

    ``text`` None means: echo the last user text (``echo: …``) unless there are tool calls.
    ``finish``: ``stop`` | ``length`` | ``tool`` | ``stop_sequence`` | ``safety``; default
    ``tool`` when there are tool calls, else ``stop``.
    ``stream_error``: when streaming, send the first text piece, then the provider's error
    event, and end the stream.
    """

    text: Optional[str] = None
    tool_calls: list[tuple[str, dict]] = field(default_factory=list)
    finish: Optional[str] = None
    input_tokens: int = 17
    output_tokens: int = 9
    cached_tokens: int = 0
    stream_error: bool = False
    stream_cut: bool = False  # streams: send the first text piece, then drop the connection

    def finish_reason(self) -> str:
        if self.finish:
            return self.finish
        return "tool" if self.tool_calls else "stop"

    def text_for(self, last_user_text: str) -> str:
        if self.text is not None:
            return self.text
        return "" if self.tool_calls else f"echo: {last_user_text}"


def split3(text: str) -> list[str]:
    """A text in three stream pieces (fewer when it is short; none when empty)."""
    if not text:
        return []
    n = len(text)
    pieces = [text[: n // 3], text[n // 3: 2 * n // 3], text[2 * n // 3:]]
    return [p for p in pieces if p]


class FakeUpstream(ScriptedServer):
    """Base of the provider fakes: recording, scripting and lifecycle (``ScriptedServer``),
    and the reply queue."""

    server_version = "FakeUpstream/1.0"

    def __init__(self) -> None:
        super().__init__()
        self.replies: deque[Reply] = deque()
        self.page_cap: int = 1000  # most items a list page holds, whatever the client asks for

    # ----------------------------------------------------------------- control
    def handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class _H(Handler):
            fake = owner

        return _H

    @property
    def base_url(self) -> str:
        """The provider ``baseUrl`` to configure (the API root, no version segment)."""
        return f"http://127.0.0.1:{self.port}"

    def queue(self, *replies: Reply) -> None:
        """What the next generation requests answer, in order (then the default echo)."""
        with self._lock:
            self.replies.extend(replies)

    def next_reply(self) -> Reply:
        with self._lock:
            return self.replies.popleft() if self.replies else Reply()

    def stream_done(self) -> None:
        with self._lock:
            self.stream_completed += 1

    # ----------------------------------------------------------------- provider part
    def route(self, h: "Handler", req: RecordedRequest) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeUpstream  # set by FakeUpstream.start

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        body = self._read_body()
        parts = urlsplit(self.path)
        req = RecordedRequest(method=self.command, target=self.path, path=parts.path,
                              query=parse_qs(parts.query, keep_blank_values=True),
                              headers=list(self.headers.items()), body=body, time=time.monotonic())
        scripted = self.fake._record(req)
        try:
            if scripted is not None:
                if scripted.delay:
                    time.sleep(scripted.delay)
                self.send_json(scripted.status, scripted.body, scripted.headers)
                return
            self.fake.route(self, req)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # ---------------------------------------------------------------- writing
    def send_json(self, status: int, body: Any, headers: Optional[dict[str, str]] = None) -> None:
        if isinstance(body, (dict, list)):
            data, ctype = json.dumps(body).encode(), "application/json"
        elif isinstance(body, str):
            data, ctype = body.encode(), "text/plain"
        elif body is None:
            data, ctype = b"", "application/json"
        else:
            data, ctype = bytes(body), "application/octet-stream"
        self.send_response(status)
        for k, v in {"Content-Type": ctype, **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def start_stream(self, headers: Optional[dict[str, str]] = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()

    def write_chunk(self, data: bytes) -> None:
        if self.fake.chunk_delay:
            time.sleep(self.fake.chunk_delay)
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def hold(self) -> None:
        """Wait at the stream gate, if one is set (called after the first text piece)."""
        gate = self.fake.stream_gate
        if gate is not None and not gate.wait(self.fake.gate_timeout):
            self.fake.gate_timed_out = True

    def cut(self) -> None:
        """Drop the connection in the middle of a chunked body (no terminating chunk)."""
        self.wfile.flush()
        self.close_connection = True
        try:
            import socket
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def end_stream(self) -> None:
        self.fake.stream_done()  # before the last chunk: the client cannot finish reading first
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
