"""Azure OpenAI / AI Foundry and Claude on Foundry through the gateway.

Keyless: the gateway exchanges a federated service-account token (the file
`AZURE_FEDERATED_TOKEN_FILE` names, as the AKS workload-identity webhook mounts it) at a fake
Entra ID token endpoint served over TLS with a test CA, which the gateway trusts through
`--extra-ca-certs`. The fake upstreams accept only a token Entra minted for their scope.
Clients: the `openai` SDK's `AzureOpenAI` (deployment URLs) and `OpenAI` (Foundry v1 URLs) on
the native route and through the Model Router, and the `anthropic` SDK for Claude on Foundry.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Iterator

import anthropic
import openai
import pytest

from cloud_support import cloud_gateway  # noqa: F401 - fixture
from fakes.cloud import (COGNITIVE_SCOPE, FOUNDRY_SCOPE, FakeAzureOpenAI, FakeEntra,
                         FakeFoundryAnthropic, CertAuthority, TokenBook)
from harness import CLIENT_KEY, PROVIDER_KEY, docs, proxy_doc, secret_doc

# Minted credentials may go to the fakes on 127.0.0.1 only because the operator says so.
pytestmark = pytest.mark.usefixtures("trust_loopback_identity")


TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "0b3c2a41-5d6e-4f70-8a91-b2c3d4e5f607"
FEDERATED = "eyJhbGciOiJSUzI1NiJ9.federated-sa-token-SECRET.c2lnbmF0dXJl"
API_VERSION = "2024-10-21"


def azure_provider(base_url: str, auth: str = "{workloadIdentity: {}}", extra: str = "",
                   name: str = "azure", type_: str = "azure") -> str:
    return (f"apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\n"
            f"metadata: {{name: {name}, namespace: ai}}\nspec:\n  type: {type_}\n"
            f"  baseUrl: {base_url}\n  auth: {auth}\n{extra}")


@pytest.fixture
def book() -> TokenBook:
    return TokenBook()


@pytest.fixture
def ca(tmp_path: Path) -> CertAuthority:
    return CertAuthority(tmp_path)


def entra_env(tmp_path: Path, entra: FakeEntra) -> dict[str, str]:
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(FEDERATED)
    return {"AZURE_FEDERATED_TOKEN_FILE": str(token_file), "AZURE_CLIENT_ID": CLIENT_ID,
            "AZURE_TENANT_ID": TENANT, "AZURE_AUTHORITY_HOST": entra.url + "/"}


@pytest.fixture
def entra(book: TokenBook, ca: CertAuthority) -> Iterator[FakeEntra]:
    e = FakeEntra(book, ca, TENANT, CLIENT_ID, FEDERATED).start()
    yield e
    e.stop()


@pytest.fixture
def azure(book: TokenBook) -> Iterator[FakeAzureOpenAI]:
    a = FakeAzureOpenAI(book).start()
    yield a
    a.stop()


def start_keyless(cloud_gateway, tmp_path, entra, ca, book, config: str, env_extra=None):
    env = entra_env(tmp_path, entra)
    env.update(env_extra or {})
    return cloud_gateway(config, env, ["--extra-ca-certs", str(ca.ca_pem)],
                         secret_values=lambda: book.minted() + [FEDERATED])


def assert_entra_tokens(fake, book: TokenBook, scope: str) -> None:
    reqs = fake.recorded(lambda r: r.path.endswith(("/chat/completions", "/messages")))
    assert reqs, "the upstream got no request"
    for r in reqs:
        assert book.check(r.bearer, scope) is None or r.bearer in book.minted(), r.path
        assert book.tokens[r.bearer][0] == scope
        assert "api-key" not in r.headers and "x-api-key" not in r.headers
        assert CLIENT_KEY not in json.dumps(r.headers)


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_azure_openai_client_on_the_native_route_with_workload_identity(cloud_gateway, tmp_path, entra, ca, book, azure):
    config = docs(azure_provider(azure.url, extra=f"  azure: {{apiVersion: \"{API_VERSION}\"}}\n"),
                  proxy_doc("team-a", ["azure"]))
    gw = start_keyless(cloud_gateway, tmp_path, entra, ca, book, config)
    client = openai.AzureOpenAI(azure_endpoint=f"{gw.url}/v1/azure/ai.team-a", api_key=CLIENT_KEY,
                                api_version=API_VERSION, max_retries=0, timeout=15)
    r = client.chat.completions.create(model="gpt-4o-prod", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Hello from Azure."
    req = azure.chat_requests()[-1]
    assert req.path == "/openai/deployments/gpt-4o-prod/chat/completions"
    assert req.query["api-version"] == [API_VERSION]
    stream = client.chat.completions.create(model="gpt-4o-prod", stream=True,
                                            messages=[{"role": "user", "content": "hi"}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.strip() == "Hello from Azure."
    assert_entra_tokens(azure, book, COGNITIVE_SCOPE)
    # The federated token went to Entra once, over TLS, for the Cognitive Services scope.
    tr = entra.token_requests()
    assert len(tr) == 1, f"{len(tr)} token exchanges"
    form = {k: v[0] for k, v in __import__("urllib.parse").parse.parse_qs(tr[0].body.decode()).items()}
    assert form["scope"] == COGNITIVE_SCOPE and form["client_assertion"] == FEDERATED


def test_foundry_v1_urls_take_the_openai_client_and_the_foundry_scope(cloud_gateway, tmp_path, entra, ca, book):
    azure = FakeAzureOpenAI(book, scope=FOUNDRY_SCOPE).start()
    try:
        config = docs(azure_provider(azure.url + "/openai/v1", name="foundry"),
                      proxy_doc("team-a", [("foundry", "foundry")]))
        gw = start_keyless(cloud_gateway, tmp_path, entra, ca, book, config)
        client = openai.OpenAI(base_url=f"{gw.url}/v1/foundry/ai.team-a", api_key=CLIENT_KEY, max_retries=0, timeout=15)
        r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "Hello from Azure."
        assert azure.chat_requests()[-1].path == "/openai/v1/chat/completions"
        # Router: discovery from GET {baseUrl}/models, then a request by model name.
        router = openai.OpenAI(base_url=gw.router_base(), api_key=CLIENT_KEY, max_retries=0, timeout=15)
        ids = {m.id for m in router.models.list().data}
        assert ids == {"foundry:gpt-4o-prod", "foundry:gpt-4o-mini"}
        r = router.chat.completions.create(model="foundry:gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert r.model == "foundry:gpt-4o-mini"
        sent = azure.chat_requests()[-1]
        assert sent.path == "/openai/v1/chat/completions" and sent.json["model"] == "gpt-4o-mini"
        assert_entra_tokens(azure, book, FOUNDRY_SCOPE)
    finally:
        azure.stop()


def test_router_to_azure_deployments_streaming_and_not_with_a_tool_round_trip(cloud_gateway, tmp_path, entra, ca, book, azure):
    config = docs(azure_provider(azure.url), proxy_doc("team-a", ["azure"]))
    gw = start_keyless(cloud_gateway, tmp_path, entra, ca, book, config)
    client = openai.OpenAI(base_url=gw.router_base(), api_key=CLIENT_KEY, max_retries=0, timeout=15)
    # Discovery lists the deployments.
    assert {m.id for m in client.models.list().data} == {"azure:gpt-4o-prod", "azure:gpt-4o-mini"}
    r = client.chat.completions.create(model="azure:gpt-4o-prod", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Hello from Azure." and r.model == "azure:gpt-4o-prod"
    req = azure.chat_requests()[-1]
    assert req.path == "/openai/deployments/gpt-4o-prod/chat/completions"
    assert req.query["api-version"] == ["2024-10-21"]
    chunks = list(client.chat.completions.create(model="azure:gpt-4o-prod", stream=True,
                                                 messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == "Hello from Azure."
    assert all(c.model == "azure:gpt-4o-prod" for c in chunks)

    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(model="azure:gpt-4o-prod", messages=messages, tools=TOOLS)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [r.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "sunny"})}]
    stream = client.chat.completions.create(model="azure:gpt-4o-prod", messages=messages, tools=TOOLS, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).strip() == "It is sunny in Paris."
    assert azure.chat_requests()[-1].json["messages"][-1]["tool_call_id"] == call.id
    assert_entra_tokens(azure, book, COGNITIVE_SCOPE)

    # A model that cannot be a deployment name never reaches Azure.
    before = len(azure.chat_requests())
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="azure:../../x", messages=[{"role": "user", "content": "hi"}])
    assert len(azure.chat_requests()) == before


def test_api_key_goes_in_the_api_key_header(start_gateway, book):
    azure = FakeAzureOpenAI(book, api_key=PROVIDER_KEY).start()
    try:
        config = docs(secret_doc("azure-key", PROVIDER_KEY),
                      azure_provider(azure.url, auth="{apiKey: {secretRef: {name: azure-key}}}",
                                     extra="  models: {static: [gpt-4o-prod]}\n"),
                      proxy_doc("team-a", ["azure"]))
        gw = start_gateway(config)
        client = openai.AzureOpenAI(azure_endpoint=f"{gw.url}/v1/azure/ai.team-a", api_key=CLIENT_KEY,
                                    api_version=API_VERSION, max_retries=0, timeout=15)
        r = client.chat.completions.create(model="gpt-4o-prod", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "Hello from Azure."
        req = azure.chat_requests()[-1]
        assert req.headers["api-key"] == PROVIDER_KEY and "authorization" not in req.headers
    finally:
        azure.stop()


def test_short_lived_entra_tokens_are_refreshed_once_under_concurrency(cloud_gateway, tmp_path, ca, book, azure):
    entra = FakeEntra(book, ca, TENANT, CLIENT_ID, FEDERATED, lifetime=5).start()
    try:
        config = docs(azure_provider(azure.url, extra="  models: {static: [gpt-4o-prod]}\n"),
                      proxy_doc("team-a", ["azure"]))
        gw = start_keyless(cloud_gateway, tmp_path, entra, ca, book, config)
        client = openai.OpenAI(base_url=gw.router_base(), api_key=CLIENT_KEY, max_retries=0, timeout=30)

        def burst(n: int = 8) -> list[str]:
            errors: list[str] = []

            def one() -> None:
                try:
                    r = client.chat.completions.create(model="azure:gpt-4o-prod",
                                                       messages=[{"role": "user", "content": "hi"}])
                    assert r.choices[0].message.content == "Hello from Azure."
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))
            threads = [threading.Thread(target=one) for _ in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return errors

        assert burst() == []
        assert len(entra.token_requests()) == 1
        time.sleep(5.5)  # the 5-second token has expired (the gateway refreshes at half-life)
        assert burst() == []
        assert len(entra.token_requests()) == 2, f"{len(entra.token_requests())} token exchanges: expected one refresh"
        assert len({r.bearer for r in azure.chat_requests()}) == 2
    finally:
        entra.stop()


def test_identity_endpoint_with_an_untrusted_certificate_fails_cleanly(cloud_gateway, tmp_path, entra, ca, book, azure):
    config = docs(azure_provider(azure.url, extra="  models: {static: [gpt-4o-prod]}\n"),
                  proxy_doc("team-a", ["azure"]))
    # No --extra-ca-certs: the test CA is not trusted.
    gw = cloud_gateway(config, entra_env(tmp_path, entra), secret_values=lambda: book.minted() + [FEDERATED])
    client = openai.OpenAI(base_url=gw.router_base(), api_key=CLIENT_KEY, max_retries=0, timeout=30)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="azure:gpt-4o-prod", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 502
    assert "Entra ID" in str(e.value)
    assert FEDERATED not in str(e.value)
    assert azure.chat_requests() == []
    assert "credentials not ready" in gw.log_text()
    assert "invalid peer certificate" in gw.log_text(), "the log should say the identity endpoint's certificate is not trusted"


def test_claude_on_foundry_with_workload_identity(cloud_gateway, tmp_path, entra, ca, book):
    foundry = FakeFoundryAnthropic(book).start()
    try:
        config = docs(azure_provider(foundry.url + "/anthropic", type_="anthropic", name="claude",
                                     extra="  models: {static: [claude-sonnet-4-6]}\n"),
                      proxy_doc("team-a", ["claude"]))
        gw = start_keyless(cloud_gateway, tmp_path, entra, ca, book, config)
        client = anthropic.Anthropic(base_url=f"{gw.url}/v1/anthropic/ai.team-a", api_key=CLIENT_KEY,
                                     max_retries=0, timeout=15)
        m = client.messages.create(model="claude-sonnet-4-6", max_tokens=64,
                                   messages=[{"role": "user", "content": "hi"}])
        assert m.content[0].text == "Hello from Claude on Foundry."
        router = openai.OpenAI(base_url=gw.router_base(), api_key=CLIENT_KEY, max_retries=0, timeout=15)
        r = router.chat.completions.create(model="anthropic:claude-sonnet-4-6",
                                           messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "Hello from Claude on Foundry."
        assert_entra_tokens(foundry, book, FOUNDRY_SCOPE)
        assert {f["scope"] for f in ({k: v[0] for k, v in __import__("urllib.parse").parse.parse_qs(
            q.body.decode()).items()} for q in entra.token_requests())} == {FOUNDRY_SCOPE}
    finally:
        foundry.stop()


def test_claude_workload_identity_needs_a_foundry_url(tmp_path):
    from harness import run_check
    f = tmp_path / "c.yaml"
    f.write_text(docs(azure_provider("https://api.anthropic.com", type_="anthropic", name="claude"),
                      proxy_doc("team-a", ["claude"])))
    out = run_check(f)
    assert out.returncode == 1 and "/anthropic" in out.stdout + out.stderr, out.stdout + out.stderr


def test_claude_on_foundry_with_an_api_key(start_gateway, book):
    foundry = FakeFoundryAnthropic(book, api_key=PROVIDER_KEY).start()
    try:
        config = docs(secret_doc("foundry-key", PROVIDER_KEY),
                      azure_provider(foundry.url + "/anthropic", type_="anthropic", name="claude",
                                     auth="{apiKey: {secretRef: {name: foundry-key}}}",
                                     extra="  models: {static: [claude-sonnet-4-6]}\n"),
                      proxy_doc("team-a", ["claude"]))
        gw = start_gateway(config)
        client = anthropic.Anthropic(base_url=f"{gw.url}/v1/anthropic/ai.team-a", api_key=CLIENT_KEY,
                                     max_retries=0, timeout=15)
        m = client.messages.create(model="claude-sonnet-4-6", max_tokens=64,
                                   messages=[{"role": "user", "content": "hi"}])
        assert m.content[0].text == "Hello from Claude on Foundry."
        req = foundry.recorded(lambda r: r.path == "/anthropic/v1/messages")[-1]
        assert req.headers["x-api-key"] == PROVIDER_KEY and "authorization" not in req.headers
    finally:
        foundry.stop()


def test_a_reload_keeps_the_cached_token(cloud_gateway, tmp_path, entra, ca, book, azure, config_dir):
    base = docs(azure_provider(azure.url, extra="  models: {static: [gpt-4o-prod]}\n"), proxy_doc("team-a", ["azure"]))
    gw = start_keyless(cloud_gateway, tmp_path, entra, ca, book, base)
    client = openai.OpenAI(base_url=gw.router_base(), api_key=CLIENT_KEY, max_retries=0, timeout=15)
    client.chat.completions.create(model="azure:gpt-4o-prod", messages=[{"role": "user", "content": "hi"}])
    assert len(entra.token_requests()) == 1
    # An edit that changes the provider (its timeout) but not its identity or scope.
    (config_dir / "portcullis.yaml").write_text(base.replace("  models:", "  timeout: 90s\n  models:"))
    deadline = time.monotonic() + 10
    while "configuration files changed" not in gw.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "configuration files changed" in gw.log_text(), "the edit was not picked up"
    time.sleep(0.3)
    client.chat.completions.create(model="azure:gpt-4o-prod", messages=[{"role": "user", "content": "hi"}])
    assert len(entra.token_requests()) == 1, "a reload re-minted an unchanged credential"
    assert len({r.bearer for r in azure.chat_requests()}) == 1
