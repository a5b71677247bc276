"""Starting the gateway with a cloud identity environment (shared by the Vertex and Azure
tests): extra environment variables and arguments, and a log check for every secret the
identity fakes handed out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import pytest

from harness import CLIENT_KEY, Gateway, assert_no_secret

# Ambient credentials of the machine running the tests must never leak into the gateway.
AMBIENT = ("GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST", "AZURE_FEDERATED_TOKEN_FILE",
           "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_AUTHORITY_HOST", "PORTCULLIS_EXTRA_CA_CERTS",
           "IDENTITY_ENDPOINT", "MSI_ENDPOINT")


def start_with_env(config_dir: Path, log: Path, config: str, env: dict[str, str],
                   extra_args: Sequence[str] = ()) -> Gateway:
    (config_dir / "portcullis.yaml").write_text(config)
    saved = {k: os.environ.get(k) for k in (*AMBIENT, *env, "HOME")}
    try:
        for k in AMBIENT:
            os.environ.pop(k, None)
        # No gcloud well-known ADC file may be found in the real home directory.
        os.environ["HOME"] = str(config_dir.parent)
        os.environ.update(env)
        return Gateway(config_dir, log, extra_args).start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def cloud_gateway(binary: Path, config_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """`start(config, env, extra_args, secret_values)`; on teardown the logs are searched for
    the client key and every value `secret_values()` returns then (minted tokens, keys)."""
    started: list[Gateway] = []
    secrets: list[Callable[[], list[str]]] = []

    def start(config: str, env: dict[str, str], extra_args: Sequence[str] = (),
              secret_values: Optional[Callable[[], list[str]]] = None) -> Gateway:
        if secret_values is not None:
            secrets.append(secret_values)
        gw = start_with_env(config_dir, tmp_path / f"portcullis-{len(started)}.log", config, env, extra_args)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
    for gw in started:
        log = gw.log_text()
        assert_no_secret(log, f"gateway log {gw.log_path}")
        assert CLIENT_KEY not in log, f"client key leaked in gateway log {gw.log_path}"
        for values in secrets:
            for s in values():
                assert s not in log, f"a token or key ({s[:8]}...) leaked in gateway log {gw.log_path}"
