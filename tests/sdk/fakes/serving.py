"""The HTTP server plumbing every fake upstream shares (Python standard library only).

Each fake is a ``ThreadingHTTPServer`` on 127.0.0.1, port 0 (the OS picks a free one), whose
request threads are daemons, served from a daemon thread that notices ``shutdown`` within
50 ms. The fakes differ only in their handler: what they record and how they answer.

``ScriptedServer`` is the base of the fakes that record every request as a
``RecordedRequest`` and can be told to answer the next (matching) request with a
``ScriptedResponse``.
"""

from __future__ import annotations

import json
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional


def make_server(handler: type[BaseHTTPRequestHandler],
                server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer) -> ThreadingHTTPServer:
    """A server on 127.0.0.1 (port 0), not yet serving."""
    server = server_class(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.block_on_close = False
    return server


def run(server: ThreadingHTTPServer) -> ThreadingHTTPServer:
    """Serve from a daemon thread."""
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def serve(handler: type[BaseHTTPRequestHandler], tls: Optional[ssl.SSLContext] = None,
          server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer) -> ThreadingHTTPServer:
    """A server on 127.0.0.1 (port 0), over TLS with ``tls``, serving from a daemon thread."""
    server = make_server(handler, server_class)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    return run(server)


def close(server: ThreadingHTTPServer) -> None:
    """Stop serving and close the listening socket."""
    server.shutdown()
    server.server_close()


def read_body(h: BaseHTTPRequestHandler) -> bytes:
    """The request body as ``Content-Length`` declares it."""
    n = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(n) if n else b""


@dataclass
class RecordedRequest:
    method: str
    target: str  # the raw request target as received
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]
    body: bytes
    time: float

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class ScriptedResponse:
    status: int = 200
    body: Any = None  # dict/list -> JSON, str/bytes -> raw
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    match: Optional[Callable[[RecordedRequest], bool]] = None


class ScriptedServer:
    """Recording, scripted answers, stream pacing and the server's lifecycle."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.chunk_delay: float = 0.0  # pause between stream pieces
        # Hold a stream after its first piece until the test sets the gate (a gateway that
        # buffers the stream whole never shows the client that piece, and times out).
        self.stream_gate: Optional[threading.Event] = None
        self.gate_timeout: float = 5.0
        self.gate_timed_out: bool = False
        self.stream_completed: int = 0  # streams written to the end
        self._script: list[ScriptedResponse] = []
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None

    def handler(self) -> type[BaseHTTPRequestHandler]:  # pragma: no cover - abstract
        """The request handler class, bound to this fake."""
        raise NotImplementedError

    def start(self):
        self._server = serve(self.handler())
        return self

    def stop(self) -> None:
        if self.stream_gate is not None:
            self.stream_gate.set()
        if self._server is not None:
            close(self._server)
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def script(self, status: int = 200, body: Any = None, headers: Optional[dict[str, str]] = None,
               delay: float = 0.0, match: Optional[Callable[[RecordedRequest], bool]] = None) -> None:
        """Answer the next request (matching ``match``, if given) with exactly this."""
        with self._lock:
            self._script.append(ScriptedResponse(status, body, dict(headers or {}), delay, match))

    def requests_to(self, path: str, method: Optional[str] = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    def all_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self.requests)

    def _record(self, req: RecordedRequest) -> Optional[ScriptedResponse]:
        """Record a request; the scripted response it takes, if any."""
        with self._lock:
            self.requests.append(req)
            for i, s in enumerate(self._script):
                if s.match is None or s.match(req):
                    return self._script.pop(i)
        return None
