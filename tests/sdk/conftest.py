"""Fixtures: a fake OpenAI upstream and the real `portcullis` binary in front of it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fakes.openai_upstream import FakeOpenAI  # noqa: E402
from harness import CLIENT_KEY, Gateway, assert_no_secret, require_binary, standard_config  # noqa: E402


@pytest.fixture(scope="session")
def binary() -> Path:
    """The binary must exist: a missing binary is a failure, never a skip."""
    return require_binary()


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI().start()
    yield f
    f.stop()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    d = tmp_path / "config"
    d.mkdir()
    return d


@pytest.fixture
def start_gateway(binary: Path, config_dir: Path, tmp_path: Path, request) -> Iterator[Callable[..., Gateway]]:
    """Write `config` into config_dir/portcullis.yaml (if given) and start the gateway.

    On teardown the gateway is stopped and its log is checked for secrets.
    The log stays at tmp_path/portcullis.log for debugging.
    """
    started: list[Gateway] = []

    def start(config: str | None = None, filename: str = "portcullis.yaml") -> Gateway:
        if config is not None:
            (config_dir / filename).write_text(config)
        gw = Gateway(config_dir, tmp_path / f"portcullis-{len(started)}.log")
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        gw.stop()
    for gw in started:
        log = gw.log_text()
        if request.config.getoption("verbose") > 0:
            sys.stderr.write(f"\n[gateway log: {gw.log_path}]\n")
        assert_no_secret(log, f"gateway log {gw.log_path}")
        assert CLIENT_KEY not in log, f"client API key leaked in gateway log {gw.log_path}"


@pytest.fixture
def gw(fake: FakeOpenAI, start_gateway) -> Gateway:
    """The gateway serving proxy ai.team-a -> provider openai (static: gpt-test, gpt-test-mini)."""
    return start_gateway(standard_config(fake.base_url))


@pytest.fixture
def trust_loopback_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cloud fakes listen on 127.0.0.1, outside the clouds' own service domains: like an
    operator with a private endpoint, these tests name it with the process-level setting
    (`--trusted-identity-hosts`, here its environment form). Without it the gateway refuses to
    send a minted credential there (tests/sdk/test_hardening_identity.py)."""
    monkeypatch.setenv("PORTCULLIS_TRUSTED_IDENTITY_HOSTS", "127.0.0.1")
