"""pytest setup for the chart, manifest and Dockerfile tests.

Run from the repository root:  .venv/bin/pytest tests/chart -q
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chartlib  # noqa: E402


@pytest.fixture(scope="session")
def default_render() -> chartlib.Render:
    return chartlib.render()


def pytest_report_header(config: pytest.Config) -> str:
    return f"helm engine: {chartlib.engine_versions()}; k8s schemas: {', '.join(chartlib.K8S_VERSIONS)}"
