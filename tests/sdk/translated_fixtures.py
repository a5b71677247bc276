"""Fixtures for the Anthropic, Gemini and Cohere suites: one fake upstream per provider and a
gateway whose proxy `ai.team-a` reaches all three (prefixes `anthropic`, `gemini`, `cohere`).

Test modules import the fixtures they use (`from translated_fixtures import ...`).
"""

from __future__ import annotations

from typing import Iterator, Optional

import pytest

from fakes.anthropic_upstream import FakeAnthropic
from fakes.base import FakeUpstream
from fakes.cohere_upstream import FakeCohere
from fakes.gemini_upstream import FakeGemini
from harness import CLIENT_KEY, PROVIDER_KEY, Gateway, docs, provider_doc, proxy_doc, secret_doc

MODELS = {"anthropic": "claude-sonnet-4-6", "gemini": "gemini-2.5-flash", "cohere": "command-a-03-2025"}
PROVIDERS = tuple(MODELS)


def assert_provider_auth(provider: str, req) -> None:
    """The upstream got the provider's key in that provider's header, and nothing of the client's."""
    if provider == "anthropic":
        assert req.header("x-api-key") == PROVIDER_KEY, req.headers
        assert req.header("authorization") is None, "client Authorization forwarded to Anthropic"
    elif provider == "gemini":
        assert req.header("x-goog-api-key") == PROVIDER_KEY, req.headers
        assert req.header("authorization") is None, "client Authorization forwarded to Gemini"
        assert "key" not in req.query, f"a ?key= parameter reached Gemini: {req.target}"
    else:
        assert req.header("authorization") == f"Bearer {PROVIDER_KEY}", req.headers
        assert req.header("x-api-key") is None
    for name, value in req.headers:
        assert CLIENT_KEY not in value, f"client key forwarded upstream in header {name}"
    assert CLIENT_KEY not in req.target, f"client key forwarded upstream in the URL {req.target}"


def three_config(fakes: dict[str, FakeUpstream], static: bool = True) -> str:
    parts = [secret_doc("provider-key", PROVIDER_KEY)]
    for name, fake in fakes.items():
        parts.append(provider_doc(name, fake.base_url, secret="provider-key", type_=name,
                                  static=[MODELS[name]] if static else None))
    parts.append(proxy_doc("team-a", list(fakes)))
    return docs(*parts)


@pytest.fixture
def anthropic_fake() -> Iterator[FakeAnthropic]:
    f = FakeAnthropic().start()
    yield f
    f.stop()


@pytest.fixture
def gemini_fake() -> Iterator[FakeGemini]:
    f = FakeGemini().start()
    yield f
    f.stop()


@pytest.fixture
def cohere_fake() -> Iterator[FakeCohere]:
    f = FakeCohere().start()
    yield f
    f.stop()


@pytest.fixture
def fakes3(anthropic_fake, gemini_fake, cohere_fake) -> dict[str, FakeUpstream]:
    return {"anthropic": anthropic_fake, "gemini": gemini_fake, "cohere": cohere_fake}


@pytest.fixture
def gw3(fakes3, start_gateway) -> Gateway:
    """Proxy ai.team-a → anthropic, gemini, cohere (one static model each)."""
    return start_gateway(three_config(fakes3))


def only(reqs: list, what: Optional[str] = None):
    assert len(reqs) == 1, f"expected one upstream request{' to ' + what if what else ''}, got " \
                           f"{[r.target for r in reqs]}"
    return reqs[0]
