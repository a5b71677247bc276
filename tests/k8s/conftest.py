"""Fixtures: a fake Kubernetes API server, fake OpenAI upstreams, and the real `portcullis
serve --kubernetes` pointed at the fake through a kubeconfig."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "sdk"))

from fake_apiserver import FakeApiServer  # noqa: E402
from fakes.openai_upstream import FakeOpenAI  # noqa: E402
from harness import (CLIENT_KEY, READY_TIMEOUT, REPO, Gateway, assert_no_secret,  # noqa: E402
                     free_port, portcullis_bin, require_binary)

from objects import LEASE_NAMESPACE  # noqa: E402


@pytest.fixture(scope="session")
def binary() -> Path:
    """The binary must exist: a missing binary is a failure, never a skip."""
    return require_binary()


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    s = FakeApiServer().start()
    yield s
    s.stop()


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


@pytest.fixture
def fake2() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


class KubeGateway(Gateway):
    """`portcullis serve --kubernetes` with KUBECONFIG pointing at the fake API server."""

    def __init__(self, apiserver: FakeApiServer, token: str, tmp: Path, extra_args=(), env=None,
                 flag: bool = True) -> None:
        self.flag = flag
        super().__init__(tmp, tmp / f"portcullis-{token}.log", extra_args)
        self.apiserver = apiserver
        self.token = token
        self.kubeconfig = tmp / f"kubeconfig-{token}"
        self.kubeconfig.write_text(apiserver.kubeconfig(token, namespace=LEASE_NAMESPACE))
        self.env_extra = dict(env or {})

    def command(self) -> list[str]:
        return [str(portcullis_bin()), "serve", *(["--kubernetes"] if self.flag else []),
                "--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin_port}",
                *self.extra_args]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.endswith("_API_KEY") and not k.startswith("KUBERNETES_") and k != "POD_NAMESPACE"}
        env.update({"KUBECONFIG": str(self.kubeconfig), "POD_NAME": self.token,
                    "PORTCULLIS_LEASE_DURATION": "2s", "RUST_LOG": "info,kube_client=off"})
        env.update(self.env_extra)
        return env

    def spawn(self) -> subprocess.Popen:
        self.port, self.admin_port = free_port(), free_port()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL,
                                     env=self.environment(), cwd=str(REPO))
        return self.proc

    def start(self) -> "KubeGateway":
        self.spawn()
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"portcullis exited early ({self.proc.returncode}):\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"portcullis did not become ready within {READY_TIMEOUT}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no graceful Lease release."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=5)
        if self._log is not None and not self._log.closed:
            self._log.close()

    def metrics(self) -> str:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=2) as r:
            return r.read().decode()


@pytest.fixture
def start_kube_gateway(binary: Path, apiserver: FakeApiServer, tmp_path: Path) -> Iterator[Callable[..., KubeGateway]]:
    started: list[KubeGateway] = []

    def start(token: str = "replica-a", extra_args=(), env: Optional[dict] = None, wait_ready: bool = True,
              flag: bool = True) -> KubeGateway:
        gw = KubeGateway(apiserver, token, tmp_path, extra_args, env, flag)
        started.append(gw)
        return gw.start() if wait_ready else gw

    yield start
    for gw in started:
        gw.stop()
    for gw in started:
        log = gw.log_text()
        assert_no_secret(log, f"gateway log {gw.log_path}")
        assert CLIENT_KEY not in log, f"client API key leaked in gateway log {gw.log_path}"


@pytest.fixture
def trust_loopback_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cloud fakes listen on 127.0.0.1, outside the clouds' own service domains: like an
    operator with a private endpoint, these tests name it with the process-level setting
    (`--trusted-identity-hosts`, here its environment form). Without it the gateway refuses to
    send a minted credential there (tests/sdk/test_hardening_identity.py)."""
    monkeypatch.setenv("PORTCULLIS_TRUSTED_IDENTITY_HOSTS", "127.0.0.1")
