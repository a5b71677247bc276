"""Vertex AI through the gateway with keyless Google credentials.

The gateway gets its token from a fake GCE metadata server (`GCE_METADATA_HOST`, as GKE
Workload Identity serves it) or signs one with a service-account JSON key from a Secret; the
fake Vertex upstream accepts only that token. Clients: `google-genai` in Vertex mode on the
native route, the `openai` SDK on the Model Router.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Iterator

import google.oauth2.credentials
import openai
import pytest
from google import genai
from google.genai import types

from cloud_support import cloud_gateway  # noqa: F401 - fixture
from fakes.cloud import FakeGoogleSts, FakeMetadataServer, FakeVertex, ServiceAccountKey, TokenBook
from harness import CLIENT_KEY, docs, proxy_doc

# Minted credentials may go to the fakes on 127.0.0.1 only because the operator says so.
pytestmark = pytest.mark.usefixtures("trust_loopback_identity")


PROJECT, LOCATION = "test-proj", "us-central1"
CLIENT_TOKEN = "ya29.client-own-token-must-not-pass"


def vertex_provider(base_url: str, auth: str = "{workloadIdentity: {}}", models: str = "",
                    name: str = "vertex") -> str:
    return (f"apiVersion: portcullis.dev/v1alpha1\nkind: LlmProvider\n"
            f"metadata: {{name: {name}, namespace: ai}}\nspec:\n  type: vertexai\n"
            f"  baseUrl: {base_url}\n  vertexai: {{project: {PROJECT}, location: {LOCATION}}}\n"
            f"  auth: {auth}\n{models}")


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


@pytest.fixture
def gw(cloud_gateway, mds: FakeMetadataServer, vertex: FakeVertex, book: TokenBook):
    config = docs(vertex_provider(vertex.url, models="  models: {static: [gemini-2.5-flash]}\n"),
                  proxy_doc("team-a", ["vertex"]))
    return cloud_gateway(config, {"GCE_METADATA_HOST": mds.host}, secret_values=book.minted)


def genai_client(gw, proxy: str = "ai.team-a", prefix: str = "vertexai", project: str = PROJECT) -> genai.Client:
    creds = google.oauth2.credentials.Credentials(token=CLIENT_TOKEN)
    return genai.Client(vertexai=True, project=project, location=LOCATION, credentials=creds,
                        http_options=types.HttpOptions(base_url=f"{gw.url}/v1/{prefix}/{proxy}",
                                                       timeout=15000))


def assert_gateway_token(vertex: FakeVertex, book: TokenBook) -> None:
    reqs = vertex.model_requests()
    assert reqs, "the Vertex fake got no model request"
    minted = set(book.minted())
    for r in reqs:
        assert r.bearer in minted, f"upstream saw a bearer the metadata server never minted: {r.bearer!r:.20}"
        assert CLIENT_TOKEN not in json.dumps(r.headers), "the client's own token reached Vertex"


def test_genai_vertex_native_route_uses_the_metadata_server_token(gw, mds, vertex, book):
    client = genai_client(gw)
    r = client.models.generate_content(model="gemini-2.5-flash", contents="Say hello")
    assert r.text == "Hello from Vertex."
    assert r.usage_metadata.total_token_count == 11
    path = vertex.model_requests()[-1].path
    assert path == f"/v1beta1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/gemini-2.5-flash:generateContent"

    text = "".join(c.text or "" for c in client.models.generate_content_stream(
        model="gemini-2.5-flash", contents="Say hello"))
    assert text == "Hello from Vertex."
    last = vertex.model_requests()[-1]
    assert last.path.endswith(":streamGenerateContent") and last.query.get("alt") == ["sse"]
    assert_gateway_token(vertex, book)
    # The metadata server was asked the GCE way, for the cloud-platform scope.
    tr = mds.token_requests()
    assert tr and all(r.headers.get("metadata-flavor") == "Google" for r in tr)
    assert any("cloud-platform" in ",".join(r.query.get("scopes", [])) for r in tr)
    # One token served every request: cached, not minted per request.
    assert len(tr) == 1, f"{len(tr)} token requests for {len(vertex.model_requests())} model requests"


def test_native_route_refuses_another_project(gw, vertex):
    client = genai_client(gw, project="someone-elses-project")
    with pytest.raises(genai.errors.ClientError) as e:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert e.value.code == 400
    assert "test-proj" in str(e.value)
    assert vertex.model_requests() == [], "a request for another project reached Vertex"


def test_router_to_vertex_streaming_and_not_with_a_tool_round_trip(gw, vertex, book):
    client = openai.OpenAI(base_url=gw.router_base(), api_key=CLIENT_KEY, max_retries=0, timeout=15)
    r = client.chat.completions.create(model="vertexai:gemini-2.5-flash",
                                       messages=[{"role": "user", "content": "Say hello"}])
    assert r.choices[0].message.content == "Hello from Vertex."
    assert r.model == "vertexai:gemini-2.5-flash"
    assert r.usage.total_tokens == 11
    req = vertex.model_requests()[-1]
    assert req.path == f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/gemini-2.5-flash:generateContent"
    assert req.json["contents"][0]["parts"][0]["text"] == "Say hello"

    stream = client.chat.completions.create(model="vertexai:gemini-2.5-flash", stream=True,
                                            messages=[{"role": "user", "content": "Say hello"}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Vertex."
    assert vertex.model_requests()[-1].query.get("alt") == ["sse"]

    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(model="vertexai:gemini-2.5-flash", messages=messages, tools=tools)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    sent = vertex.model_requests()[-1].json
    assert sent["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    messages += [r.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "sunny"})}]
    r = client.chat.completions.create(model="vertexai:gemini-2.5-flash", messages=messages, tools=tools)
    assert r.choices[0].message.content == "It is sunny in Paris."
    back = vertex.model_requests()[-1].json["contents"]
    assert any("functionResponse" in p for c in back for p in c["parts"]), back
    assert_gateway_token(vertex, book)


def test_service_account_key_signs_a_token_vertex_verifies(cloud_gateway, book, tmp_path):
    key = ServiceAccountKey(token_uri="http://127.0.0.1:9/token")
    vertex = FakeVertex(PROJECT, LOCATION, book, sa_key=key).start()
    try:
        secret = ("apiVersion: v1\nkind: Secret\nmetadata: {name: vertex-sa, namespace: ai}\n"
                  f"stringData:\n  key.json: {json.dumps(json.dumps(key.json))}\n")
        config = docs(secret, vertex_provider(vertex.url, auth="{serviceAccountKey: {secretRef: {name: vertex-sa}}}"),
                      proxy_doc("team-a", ["vertex"]))
        pem = key.json["private_key"]
        body_lines = [ln for ln in pem.splitlines() if ln and "PRIVATE KEY" not in ln]
        gw = cloud_gateway(config, {}, secret_values=lambda: body_lines + [r.bearer or "" for r in vertex.model_requests()])
        client = openai.OpenAI(base_url=gw.router_base(), api_key=CLIENT_KEY, max_retries=0, timeout=15)
        r = client.chat.completions.create(model="vertexai:gemini-2.5-pro",
                                           messages=[{"role": "user", "content": "Say hello"}])
        assert r.choices[0].message.content == "Hello from Vertex."
        reqs = vertex.model_requests()
        assert reqs and key.verify(reqs[-1].bearer) is None
        # Discovery lists the publisher models through the same credential.
        models = client.models.list()
        assert {m.id for m in models.data} >= {"vertexai:gemini-2.5-flash", "vertexai:gemini-2.5-pro"}
        lists = vertex.recorded(lambda q: q.path == "/v1beta1/publishers/google/models")
        assert lists and key.verify(lists[-1].bearer) is None
    finally:
        vertex.stop()


def test_a_bad_service_account_key_is_refused_without_echoing_it(tmp_path):
    from harness import run_check
    secret = ("apiVersion: v1\nkind: Secret\nmetadata: {name: vertex-sa, namespace: ai}\n"
              "stringData:\n  key.json: '{\"type\": \"authorized_user\", \"private_key\": \"PRIVATE-LEAK\"}'\n")
    f = tmp_path / "bad.yaml"
    f.write_text(docs(secret, vertex_provider("http://127.0.0.1:9", auth="{serviceAccountKey: {secretRef: {name: vertex-sa}}}"),
                      proxy_doc("team-a", ["vertex"])))
    out = run_check(f)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "InvalidSecret" in out.stdout + out.stderr
    assert "PRIVATE-LEAK" not in out.stdout + out.stderr


def test_short_lived_tokens_are_refreshed_once_under_concurrency(cloud_gateway, book, vertex):
    mds = FakeMetadataServer(book, lifetime=5).start()
    try:
        config = docs(vertex_provider(vertex.url, models="  models: {static: [gemini-2.5-flash]}\n"),
                      proxy_doc("team-a", ["vertex"]))
        gw = cloud_gateway(config, {"GCE_METADATA_HOST": mds.host}, secret_values=book.minted)
        client = openai.OpenAI(base_url=gw.router_base(), api_key=CLIENT_KEY, max_retries=0, timeout=30)

        def burst(n: int = 8) -> list[str]:
            errors: list[str] = []

            def one() -> None:
                try:
                    r = client.chat.completions.create(model="vertexai:gemini-2.5-flash",
                                                       messages=[{"role": "user", "content": "hi"}])
                    assert r.choices[0].message.content == "Hello from Vertex."
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))
            threads = [threading.Thread(target=one) for _ in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return errors

        assert burst() == []
        first = len(mds.token_requests())
        assert first == 1, f"{first} token requests for the first burst"
        time.sleep(6)  # the 5-second token has expired
        assert burst() == []
        assert len(mds.token_requests()) == 2, f"{len(mds.token_requests())} token requests: expected one refresh"
        tokens = {r.bearer for r in vertex.model_requests()}
        assert len(tokens) == 2, "requests after expiry must use the refreshed token"
    finally:
        mds.stop()


def test_workload_identity_federation_through_an_external_account_file(cloud_gateway, book, vertex, tmp_path):
    """ADC with an `external_account` file (GKE-less federation, e.g. from AKS or EKS): the
    gateway exchanges the federated token at the STS and uses the access token it returns."""
    audience = ("//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/"
                "aks-pool/providers/aks")
    federated = "eyJhbGciOiJSUzI1NiJ9.k8s-sa-token-FEDERATED-SECRET.c2ln"
    sts = FakeGoogleSts(book, audience, federated).start()
    try:
        (tmp_path / "sa-token").write_text(federated)
        adc = tmp_path / "external-account.json"
        adc.write_text(json.dumps({
            "type": "external_account", "audience": audience,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": f"{sts.url}/v1/token",
            "credential_source": {"file": str(tmp_path / "sa-token")}}))
        config = docs(vertex_provider(vertex.url, models="  models: {static: [gemini-2.5-flash]}\n"),
                      proxy_doc("team-a", ["vertex"]))
        gw = cloud_gateway(config, {"GOOGLE_APPLICATION_CREDENTIALS": str(adc)},
                           secret_values=lambda: book.minted() + [federated])
        client = openai.OpenAI(base_url=gw.router_base(), api_key=CLIENT_KEY, max_retries=0, timeout=15)
        r = client.chat.completions.create(model="vertexai:gemini-2.5-flash",
                                           messages=[{"role": "user", "content": "Say hello"}])
        assert r.choices[0].message.content == "Hello from Vertex."
        assert_gateway_token(vertex, book)
        assert all(t.startswith("ya29.sts") for t in book.minted())
        assert len(sts.recorded()) == 1
    finally:
        sts.stop()


def test_an_unreachable_metadata_server_is_a_clear_502_in_each_clients_shape(cloud_gateway, vertex):
    from harness import closed_port
    config = docs(vertex_provider(vertex.url, models="  models: {static: [gemini-2.5-flash]}\n"),
                  proxy_doc("team-a", ["vertex"]))
    gw = cloud_gateway(config, {"GCE_METADATA_HOST": f"127.0.0.1:{closed_port()}"})
    router = openai.OpenAI(base_url=gw.router_base(), api_key=CLIENT_KEY, max_retries=0, timeout=15)
    with pytest.raises(openai.APIStatusError) as e:
        router.chat.completions.create(model="vertexai:gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 502 and "GCP" in str(e.value) and "computeMetadata" in str(e.value)
    client = genai_client(gw)
    with pytest.raises(genai.errors.ServerError) as ge:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert ge.value.code == 502 and "GCP" in str(ge.value)
    assert vertex.model_requests() == []
    assert "credentials not ready" in gw.log_text()


def test_check_online_obtains_the_token_for_real(mds, book, tmp_path):
    """`portcullis check --online` mints through the metadata server and says so; with the
    metadata server gone it exits 1 and names the provider, never printing a token."""
    import os
    import subprocess

    from harness import portcullis_bin
    f = tmp_path / "vertex.yaml"
    f.write_text(docs(vertex_provider("http://127.0.0.1:9", models="  models: {static: [gemini-2.5-flash]}\n"),
                      proxy_doc("team-a", ["vertex"])))
    home = tmp_path / "home"
    home.mkdir()

    def check(metadata_host: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items()
               if not k.endswith("_API_KEY") and not k.startswith(("GOOGLE_", "GCE_", "AZURE_"))}
        env.update(GCE_METADATA_HOST=metadata_host, HOME=str(home))
        return subprocess.run([str(portcullis_bin()), "check", "--online", str(f)],
                              capture_output=True, text=True, timeout=60, env=env)

    out = check(mds.host)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "credentials LlmProvider ai/vertex: obtained" in out.stdout, out.stdout
    assert len(mds.token_requests()) >= 1, "check --online did not ask the metadata server"
    for token in book.minted():
        assert token not in out.stdout + out.stderr

    # Offline check does not touch the metadata server.
    before = len(mds.token_requests())
    from harness import run_check
    assert run_check(f).returncode == 0
    assert len(mds.token_requests()) == before

    mds.stop()
    out = check(mds.host)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "LlmProvider ai/vertex: credentials:" in out.stderr and "CredentialsNotReady" in out.stderr, out.stderr
