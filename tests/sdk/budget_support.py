"""Helpers for the LlmBudget suites: manifests, metrics, and a real `redis-server` on a free
127.0.0.1 port."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from harness import CLIENT_KEY, Gateway, free_port

ALICE_KEY = "sk-alice-KEY-budget-1f2e"
BOB_KEY = "sk-bob-KEY-budget-9a8b"


def client_keys() -> str:
    return ("apiVersion: v1\nkind: Secret\nmetadata: {name: client-keys, namespace: ai}\n"
            f"stringData: {{team-a-app: {CLIENT_KEY}, alice: {ALICE_KEY}, bob: {BOB_KEY}}}\n")


def budget_doc(limits: list[dict[str, Any]], name: str = "limits", targets: Optional[list[str]] = ("team-a",),
               store: Optional[dict] = None, on_unavailable: Optional[str] = None) -> str:
    spec: dict[str, Any] = {"limits": limits}
    if targets is not None:
        spec["targetRefs"] = [{"name": t} for t in targets]
    if store is not None:
        spec["store"] = store
    if on_unavailable is not None:
        spec["onStoreUnavailable"] = on_unavailable
    return json.dumps({"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmBudget",
                       "metadata": {"name": name, "namespace": "ai"}, "spec": spec}) + "\n"


def metrics(gw: Gateway) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.admin_port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(gw: Gateway, name: str, **labels: str) -> float:
    """The value of one series (0 when absent)."""
    for line in metrics(gw).splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def audit_lines(gw: Gateway) -> list[dict]:
    out = []
    for line in gw.log_text().splitlines():
        if line.startswith('{"time"'):
            out.append(json.loads(line))
    return out


def wait_for(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class RedisServer:
    """A real `redis-server` (Debian's package) on a free loopback port, no persistence."""

    def __init__(self, workdir: Path, extra: tuple[str, ...] = ()) -> None:
        self.extra = extra
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: tests/run.sh installs Debian's `redis-server` "
                        "(apt-get install -y redis-server)", pytrace=False)
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "yes", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        wait_for(self.ping, 10, "redis-server to answer PING")
        return self

    def ping(self) -> bool:
        import socket
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One command in RESP, the raw reply."""
        import socket
        payload = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(payload)
            time.sleep(0.05)
            return s.recv(65536)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing (a hung store)."""
        import signal
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        import signal
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
