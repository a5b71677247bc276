"""Nobody exhausts the gateway (issue 11, item 2): bounded metrics labels, request-head timeouts
and limits, and kept-alive connections that survive an early answer."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import secrets
import socket
import time
import urllib.request

import pytest

from fakes.openai_upstream import FakeOpenAI
from harness import CLIENT_KEY, PROVIDER_KEY, Gateway, docs, provider_doc, secret_doc

CLIENT_KEYS = ("apiVersion: v1\nkind: Secret\nmetadata: {name: client-keys, namespace: ai}\n"
               f"stringData: {{app: {CLIENT_KEY}}}\n")
PROXY = json.dumps({"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmProxy",
                    "metadata": {"name": "team-a", "namespace": "ai"},
                    "spec": {"providers": [{"providerRef": {"name": "openai"}}],
                             "clientAuth": {"apiKeys": {"secretRef": {"name": "client-keys"}}}}}) + "\n"


def config(fake: FakeOpenAI) -> str:
    return docs(secret_doc("openai-key", PROVIDER_KEY), CLIENT_KEYS, provider_doc("openai", fake.base_url), PROXY)


def metrics(gw: Gateway) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.admin_port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_random_prefixes_from_unauthenticated_callers_do_not_grow_metrics(fake, start_gateway):
    gw = start_gateway(config(fake))
    # One request of each kind first, so the series that configuration allows exist.
    assert gw.raw("GET", "/v1/openai/ai.team-a/models", headers={"Authorization": "Bearer nope"}).status == 401
    before = len(metrics(gw))
    prefixes = [secrets.token_hex(1024) for _ in range(200)]  # 2 KB each

    def hit(prefix: str) -> int:
        return gw.raw("POST", f"/v1/{prefix}/ai.team-a/x", body={}, headers={"Authorization": "Bearer nope"},
                      timeout=30).status

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        statuses = list(pool.map(hit, prefixes))
    assert set(statuses) == {401}, set(statuses)
    text = metrics(gw)
    assert not any(p[:64] in text for p in prefixes), "a caller's URL segment became a metrics label"
    # A bounded number of new series (the fixed `unknown` label), not one per request.
    assert len(text) < before + 4096, f"/metrics grew from {before} to {len(text)} bytes"
    assert 'provider="unknown"' in text


def test_a_half_sent_request_head_is_closed_within_the_header_timeout(fake, start_gateway, config_dir, tmp_path):
    (config_dir / "portcullis.yaml").write_text(config(fake))
    gw = Gateway(config_dir, tmp_path / "gw.log", ["--header-read-timeout", "1s"]).start()
    try:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
            s.sendall(b"POST /v1/model-router/ai.team-a/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            t0 = time.monotonic()
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                data = b""
            took = time.monotonic() - t0
        # Closed (EOF, perhaps after a 408) well within the 10 s read timeout of this socket.
        assert took < 3.0, f"the connection stayed open {took:.1f} s"
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data
        # The gateway still serves whole requests.
        assert gw.raw("GET", "/v1/model-router/ai.team-a/models").status == 200
    finally:
        gw.stop()


def test_oversized_and_overcounted_request_heads_are_refused(fake, start_gateway):
    gw = start_gateway(config(fake))
    many = {f"x-h{i}": "v" for i in range(150)}
    with _status(431) as st:
        st.status = _send(gw.port, many)
    big = {"x-big": "v" * (80 * 1024)}
    with _status(431) as st:
        st.status = _send(gw.port, big)
    # Normal requests still work.
    assert gw.raw("GET", "/v1/model-router/ai.team-a/models").status == 200


class _status:
    """`with _status(431) as st: st.status = ...` asserts the status (or a closed connection)."""

    def __init__(self, want: int) -> None:
        self.want = want
        self.status: int | None = None

    def __enter__(self) -> "_status":
        return self

    def __exit__(self, *exc) -> bool:
        if exc[0] is not None:
            return False
        assert self.status == self.want, self.status
        return False


def _send(port: int, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/v1/model-router/ai.team-a/models", headers={"Authorization": f"Bearer {CLIENT_KEY}", **headers})
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize("case", ["401", "404-proxy", "404-prefix", "413"])
def test_kept_alive_connection_survives_an_early_answer(fake, start_gateway, config_dir, tmp_path, case):
    (config_dir / "portcullis.yaml").write_text(config(fake))
    gw = Gateway(config_dir, tmp_path / "gw.log", ["--max-body-bytes", "4096"]).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        body = json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "x" * 3000}]})
        target, auth, want = {
            "401": ("/v1/model-router/ai.team-a/chat/completions", "Bearer wrong", 401),
            "404-proxy": ("/v1/model-router/ai.nope/chat/completions", f"Bearer {CLIENT_KEY}", 404),
            "404-prefix": ("/v1/nope/ai.team-a/chat/completions", f"Bearer {CLIENT_KEY}", 404),
            "413": ("/v1/model-router/ai.team-a/chat/completions", f"Bearer {CLIENT_KEY}", 413),
        }[case]
        if case == "413":
            body = json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "x" * 20000}]})
        for _ in range(3):
            conn.request("POST", target, body=body, headers={"Authorization": auth, "Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            assert r.status == want
            sock = conn.sock
            assert sock is not None, "the gateway closed the connection after its answer"
            # The same connection carries the next, good request.
            conn.request("GET", "/v1/model-router/ai.team-a/models", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
            r = conn.getresponse()
            r.read()
            assert r.status == 200
            assert conn.sock is sock, "a new connection was opened"
        conn.close()
    finally:
        gw.stop()


def _read_response(s: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response (Content-Length or chunked)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {buf!r}")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    lines = [line.lower() for line in head.split(b"\r\n")[1:]]
    if b"transfer-encoding: chunked" in lines:
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid-body")
            rest += chunk
        return status, rest
    length = next(int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length:"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        rest += chunk
    return status, rest[:length]


@pytest.mark.parametrize("target,key,want", [("/v1/model-router/ai.team-a/chat/completions", "wrong", 401),
                                             ("/v1/nope/ai.team-a/chat/completions", CLIENT_KEY, 404)])
def test_an_early_answer_waits_for_a_small_body_still_on_its_way(fake, start_gateway, target, key, want):
    gw = start_gateway(config(fake))
    body = json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "x" * 8000}]}).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(f"POST {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        time.sleep(0.3)  # the answer is ready before the body arrives
        s.sendall(body)
        status, _ = _read_response(s)
        assert status == want
        s.sendall(f"GET /v1/model-router/ai.team-a/models HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {CLIENT_KEY}\r\n\r\n".encode())
        status, _ = _read_response(s)
        assert status == 200


def test_an_idle_kept_alive_connection_is_closed_after_the_header_timeout(fake, config_dir, tmp_path):
    (config_dir / "portcullis.yaml").write_text(config(fake))
    gw = Gateway(config_dir, tmp_path / "gw.log", ["--header-read-timeout", "1s"]).start()
    try:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
            s.sendall(f"GET /v1/model-router/ai.team-a/models HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {CLIENT_KEY}\r\n\r\n".encode())
            status, _ = _read_response(s)
            assert status == 200
            t0 = time.monotonic()
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                data = b""
            took = time.monotonic() - t0
        assert data == b"" and took < 3.0, (data, took)
    finally:
        gw.stop()
