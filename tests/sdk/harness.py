"""Start the real `portcullis` binary and talk to it (shared by the SDK tests)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import openai

REPO = Path(__file__).resolve().parents[2]

# The provider's key (lives only in the Secret) and the key the client sends.
PROVIDER_KEY = "sk-upstream-SECRET-5b9e2c71d4"
ALT_PROVIDER_KEY = "sk-alt-SECRET-b64-0c3f7a9e"  # stored base64-encoded in `data`
CLIENT_KEY = "sk-client-KEY-e81d44aa"
SECRETS = (PROVIDER_KEY, ALT_PROVIDER_KEY)

READY_TIMEOUT = 15.0


def portcullis_bin() -> Path:
    """The binary under test: $PORTCULLIS_BIN or <repo>/target/debug/portcullis."""
    return Path(os.environ.get("PORTCULLIS_BIN") or REPO / "target" / "debug" / "portcullis")


def require_binary() -> Path:
    """The binary under test; a missing binary fails the test, never skips it."""
    import pytest

    b = portcullis_bin()
    if not b.is_file() or not os.access(b, os.X_OK):
        pytest.fail(
            f"portcullis binary not found or not executable at {b}. Build it first "
            f"(`cargo build`) or set PORTCULLIS_BIN=/path/to/portcullis.",
            pytrace=False,
        )
    return b


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A loopback port with nothing listening on it (for 'upstream down')."""
    return free_port()


# --------------------------------------------------------------------- config
def yaml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def secret_doc(name: str, key: str, ns: str = "ai", b64: bool = False) -> str:
    if b64:
        return (f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\n"
                f"type: Opaque\ndata: {{apiKey: {base64.b64encode(key.encode()).decode()}}}\n")
    return (f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"stringData: {{apiKey: {key}}}\n")


def provider_doc(name: str, base_url: str, secret: str = "openai-key", ns: str = "ai",
                 static: Optional[Sequence[str]] = ("gpt-test", "gpt-test-mini"),
                 allow: Optional[Sequence[str]] = None, timeout: Optional[str] = None,
                 type_: str = "openai") -> str:
    lines = [
        "apiVersion: portcullis.dev/v1alpha1",
        "kind: LlmProvider",
        f"metadata: {{name: {name}, namespace: {ns}}}",
        "spec:",
        f"  type: {type_}",
        f"  baseUrl: {base_url}",
        f"  auth: {{apiKey: {{secretRef: {{name: {secret}}}}}}}",
    ]
    models = []
    if static is not None:
        models.append(f"static: {yaml_list(static)}")
    if allow is not None:
        models.append(f"allow: {yaml_list(allow)}")
    if models:
        lines.append("  models: {" + ", ".join(models) + "}")
    if timeout:
        lines.append(f"  timeout: {timeout}")
    return "\n".join(lines) + "\n"


def proxy_doc(name: str, providers: Sequence[str | tuple[str, str]], ns: str = "ai",
              default_model: Optional[str] = None) -> str:
    refs = []
    for p in providers:
        if isinstance(p, tuple):
            refs.append(f"{{providerRef: {{name: {p[0]}}}, prefix: {p[1]}}}")
        else:
            refs.append(f"{{providerRef: {{name: {p}}}}}")
    out = ("apiVersion: portcullis.dev/v1alpha1\nkind: LlmProxy\n"
           f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n  providers: [{', '.join(refs)}]\n")
    if default_model:
        out += f"  defaultModel: {default_model}\n"
    return out


def docs(*parts: str) -> str:
    return "---\n".join(parts)


def standard_config(fake_base_url: str, **provider_kw: Any) -> str:
    """Secret + LlmProvider `openai` + LlmProxy `team-a`, all in namespace `ai`."""
    return docs(
        secret_doc("openai-key", PROVIDER_KEY),
        provider_doc("openai", fake_base_url, **provider_kw),
        proxy_doc("team-a", ["openai"]),
    )


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one rename (as an editor or a ConfigMap update does)."""
    fd, tmp = tempfile.mkstemp(prefix=".edit-", dir=str(path.parent.parent))
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------- gateway
class Gateway:
    """One `portcullis serve --config DIR` process; stderr goes to a log file."""

    def __init__(self, config_dir: Path, log_path: Path, extra_args: Sequence[str] = ()) -> None:
        self.config_dir = config_dir
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        self.admin_port = 0
        self._log = None

    # ---- lifecycle
    def start(self) -> "Gateway":
        binary = portcullis_bin()
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        last_err = ""
        for _attempt in range(3):
            self.port, self.admin_port = free_port(), free_port()
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [str(binary), "serve", "--config", str(self.config_dir),
                 "--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin_port}",
                 *self.extra_args],
                stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL, env=env, cwd=str(REPO),
            )
            deadline = time.monotonic() + READY_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if self.ready():
                    return self
                time.sleep(0.05)
            if self.proc.poll() is None:
                self.stop()
                raise AssertionError(
                    f"portcullis did not become ready (GET /readyz != 200) within {READY_TIMEOUT}s.\n"
                    f"--- log tail ({self.log_path}) ---\n{self.log_tail()}")
            last_err = f"exit code {self.proc.returncode}"
            self._log.close()
            # Retry only when the port was taken under us.
            if "in use" not in self.log_tail().lower():
                break
        raise AssertionError(f"portcullis serve exited early ({last_err}).\n--- log tail ---\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._log is not None and not self._log.closed:
            self._log.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    # ---- URLs and clients
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def router_base(self, proxy: str = "ai.team-a") -> str:
        return f"{self.url}/v1/model-router/{proxy}"

    def native_base(self, proxy: str = "ai.team-a", prefix: str = "openai") -> str:
        return f"{self.url}/v1/{prefix}/{proxy}"

    def router_client(self, proxy: str = "ai.team-a", timeout: float = 15.0, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.router_base(proxy), api_key=CLIENT_KEY, max_retries=0,
                             timeout=timeout, **kw)

    def native_client(self, proxy: str = "ai.team-a", prefix: str = "openai", timeout: float = 15.0,
                      **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.native_base(proxy, prefix), api_key=CLIENT_KEY, max_retries=0,
                             timeout=timeout, **kw)

    # ---- raw HTTP (exact request target, no normalisation)
    def raw(self, method: str, target: str, body: Optional[bytes | str | dict] = None,
            headers: Optional[dict[str, str]] = None, timeout: float = 15.0) -> "RawResponse":
        return raw_request(self.port, method, target, body, headers, timeout)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(port: int, method: str, target: str, body: Optional[bytes | str | dict] = None,
                headers: Optional[dict[str, str]] = None, timeout: float = 15.0) -> RawResponse:
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    hdrs = {"Authorization": f"Bearer {CLIENT_KEY}"}
    if body is not None:
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=hdrs)
        r = conn.getresponse()
        return RawResponse(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def send_oversized(port: int, target: str, size: int, timeout: float = 60.0) -> RawResponse:
    """POST `size` bytes of a JSON body, stopping early if the server answers first."""
    import select

    head = (f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {CLIENT_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\nConnection: close\r\n\r\n").encode()
    prefix = b'{"model": "openai:gpt-test", "messages": [{"role": "user", "content": "'
    suffix = b'"}]}'
    filler = size - len(prefix) - len(suffix)
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(head + prefix)
        block = b"a" * 65536
        sent = 0
        answered = False
        deadline = time.monotonic() + timeout
        while sent < filler and time.monotonic() < deadline:
            r, w, _ = select.select([sock], [sock], [], 1.0)
            if r:
                answered = True
                break
            if w:
                n = min(len(block), filler - sent)
                try:
                    sent += sock.send(block[:n])
                except (BrokenPipeError, ConnectionResetError):
                    answered = True
                    break
        if not answered:
            try:
                sock.sendall(suffix)
            except (BrokenPipeError, ConnectionResetError):
                pass
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                hdr, _, rest = data.partition(b"\r\n\r\n")
                m = [ln for ln in hdr.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
                if m and len(rest) >= int(m[0].split(b":")[1]):
                    break
                if b"chunked" in hdr.lower() and rest.endswith(b"0\r\n\r\n"):
                    break
    finally:
        sock.close()
    if not data:
        raise AssertionError("gateway closed the connection without any HTTP response to an oversized body")
    hdr, _, rest = data.partition(b"\r\n\r\n")
    lines = hdr.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.decode(errors="replace").partition(":")
        headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body, buf = b"", rest
        while buf:
            size_line, _, buf = buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            body, buf = body + buf[:size], buf[size + 2:]
        rest = body
    return RawResponse(status, headers, rest)


def run_check(*paths: Path | str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    return subprocess.run([str(portcullis_bin()), "check", *map(str, paths)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(REPO))


def assert_openai_error_shape(body: Any) -> dict:
    """`{"error": {"message", "type", "param", "code"}}` as OpenAI answers errors."""
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"not an OpenAI error body: {body!r}"
    err = body["error"]
    for k in ("message", "type", "param", "code"):
        assert k in err, f"OpenAI error object lacks {k!r}: {body!r}"
    assert isinstance(err["message"], str) and err["message"], f"empty error message: {body!r}"
    return err


def assert_no_secret(text: str, where: str) -> None:
    for s in SECRETS:
        assert s not in text, f"provider secret {s[:10]}... leaked in {where}"

