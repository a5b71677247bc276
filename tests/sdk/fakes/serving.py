"""The HTTP server plumbing every fake upstream shares (Python standard library only).

Each fake is a ``ThreadingHTTPServer`` on 127.0.0.1, port 0 (the OS picks a free one), whose
request threads are daemons, served from a daemon thread that notices ``shutdown`` within
50 ms. The fakes differ only in their handler: what they record and how they answer.
"""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional


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
