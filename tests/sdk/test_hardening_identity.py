"""Keyless identity goes only to its own cloud (issue 11, item 1).

A minted credential (GCP token, Entra token, SigV4) is sent only to the cloud's own service
domains, or to hosts the operator names with `--trusted-identity-hosts` /
`PORTCULLIS_TRUSTED_IDENTITY_HOSTS`. A provider pointed anywhere else is a reported problem and
the token never leaves; API-key providers keep working on any host. This module deliberately
does NOT use the `trust_loopback_identity` fixture the other cloud suites use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import openai
import pytest
from google import genai

from cloud_support import cloud_gateway  # noqa: F401 - fixture
from fakes.cloud import FakeMetadataServer, FakeVertex, TokenBook
from fakes.openai_upstream import FakeOpenAI
from harness import CLIENT_KEY, PROVIDER_KEY, docs, provider_doc, proxy_doc, run_check, secret_doc
from test_vertex import LOCATION, PROJECT, genai_client, vertex_provider

TRUST_ENV = "PORTCULLIS_TRUSTED_IDENTITY_HOSTS"


@pytest.fixture(autouse=True)
def no_ambient_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRUST_ENV, raising=False)


@pytest.fixture
def book() -> TokenBook:
    return TokenBook()


@pytest.fixture
def mds(book: TokenBook) -> Iterator[FakeMetadataServer]:
    m = FakeMetadataServer(book).start()
    yield m
    m.stop()


@pytest.fixture
def vertex(book: TokenBook) -> Iterator[FakeVertex]:
    v = FakeVertex(PROJECT, LOCATION, book).start()
    yield v
    v.stop()


def config_with_api_key_neighbours(vertex_url: str, fake: FakeOpenAI) -> str:
    return docs(
        vertex_provider(vertex_url, models="  models: {static: [gemini-2.5-flash]}\n"),
        proxy_doc("team-a", ["vertex"]),
        secret_doc("provider-key", PROVIDER_KEY),
        provider_doc("vllm", fake.base_url, secret="provider-key", type_="vllm",
                     static=("gpt-test",)),
        provider_doc("compat", fake.base_url, secret="provider-key", type_="openai-compatible",
                     static=("gpt-test",)),
        proxy_doc("team-b", ["vllm", "compat"]),
    )


def test_workload_identity_to_an_unlisted_host_is_refused_and_no_token_leaves(
        cloud_gateway, mds, vertex, book, tmp_path):
    fake = FakeOpenAI().start()
    try:
        gw = cloud_gateway(config_with_api_key_neighbours(vertex.url, fake),
                           {"GCE_METADATA_HOST": mds.host}, secret_values=book.minted)
        log = gw.log_text()
        assert "UntrustedIdentityHost" in log, gw.log_tail()
        assert "--trusted-identity-hosts" in log
        # The proxy whose only provider was refused is not served...
        client = genai_client(gw)
        with pytest.raises(genai.errors.ClientError) as e:
            client.models.generate_content(model="gemini-2.5-flash", contents="hi")
        assert e.value.code == 404
        router = openai.OpenAI(base_url=gw.router_base("ai.team-a"), api_key=CLIENT_KEY, max_retries=0, timeout=15)
        with pytest.raises(openai.NotFoundError):
            router.chat.completions.create(model="vertex:gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}])
        # ... while API-key providers on any host keep working, through the native route and the router.
        for prefix in ("vllm", "openai-compatible"):
            native = openai.OpenAI(base_url=gw.native_base("ai.team-b", prefix), api_key=CLIENT_KEY,
                                   max_retries=0, timeout=15)
            r = native.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
            assert r.choices[0].message.content
        r = openai.OpenAI(base_url=gw.router_base("ai.team-b"), api_key=CLIENT_KEY, max_retries=0,
                          timeout=15).chat.completions.create(
            model="openai-compatible:gpt-test", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content
        assert all(req.header("authorization") == f"Bearer {PROVIDER_KEY}" for req in fake.requests), \
            "the API-key providers did not send their key"
    finally:
        fake.stop()
    # The token never left: Vertex saw no request at all (no model call, no discovery), and
    # nothing was even minted for it.
    assert vertex.recorded() == [], [r.path for r in vertex.recorded()]
    assert book.minted() == []


def test_check_names_the_untrusted_host_and_the_flag(vertex, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(docs(vertex_provider("https://anywhere.example", models="  models: {static: [m]}\n"),
                      proxy_doc("team-a", ["vertex"])))
    out = run_check(f)
    assert out.returncode == 1, out.stdout
    assert "UntrustedIdentityHost" in out.stderr and "--trusted-identity-hosts" in out.stderr, out.stderr
    assert "*.googleapis.com" in out.stderr
    # The same file with the host trusted by the operator passes.
    trusted = run_check(f, "--trusted-identity-hosts", "anywhere.example")
    assert trusted.returncode == 0, trusted.stderr


def test_azure_scope_is_one_of_the_documented_two_unless_the_operator_allows_more(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text(docs(
        "apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\nmetadata: {name: azure, namespace: ai}\n"
        "spec:\n  type: azure\n  baseUrl: https://r.openai.azure.com\n  auth: {workloadIdentity: {}}\n"
        "  azure: {scope: 'https://vault.azure.net/.default'}\n  models: {static: [gpt-4o]}\n",
        proxy_doc("team-a", ["azure"])))
    out = run_check(f)
    assert out.returncode == 1
    assert "UntrustedIdentityScope" in out.stderr and "https://vault.azure.net/.default" in out.stderr, out.stderr
    allowed = run_check(f, "--allowed-azure-scopes", "https://vault.azure.net/.default")
    assert allowed.returncode == 0, allowed.stderr


def test_the_operator_flag_lets_the_token_reach_a_named_host(cloud_gateway, mds, vertex, book):
    config = docs(vertex_provider(vertex.url, models="  models: {static: [gemini-2.5-flash]}\n"),
                  proxy_doc("team-a", ["vertex"]))
    # Only this fake's port: another port of the same host stays untrusted.
    gw = cloud_gateway(config, {"GCE_METADATA_HOST": mds.host},
                       ["--trusted-identity-hosts", f"127.0.0.1:{vertex.port}"], secret_values=book.minted)
    client = genai_client(gw)
    r = client.models.generate_content(model="gemini-2.5-flash", contents="Say hello")
    assert r.text == "Hello from Vertex."
    assert vertex.model_requests()[-1].bearer in book.minted()
    assert TRUST_ENV not in os.environ
