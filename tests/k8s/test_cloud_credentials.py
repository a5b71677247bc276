"""`serve --kubernetes` with a keyless cloud provider: `CredentialsReady` says whether a
credential was really obtained. Vertex AI with workload identity, the token served by a fake
GCE metadata server (`GCE_METADATA_HOST`, as on GKE) that works, or that is not there."""

from __future__ import annotations

import openai

from fakes.cloud import FakeMetadataServer, FakeVertex, TokenBook
from harness import closed_port
from objects import NS, cond_is, condition, proxy, wait_until

PROJECT, LOCATION = "test-proj", "us-central1"


def vertex_provider(base_url: str) -> dict:
    return {"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmProvider",
            "metadata": {"name": "vertex", "namespace": NS},
            "spec": {"type": "vertexai", "baseUrl": base_url, "auth": {"workloadIdentity": {}},
                     "vertexai": {"project": PROJECT, "location": LOCATION},
                     "models": {"static": ["gemini-2.5-flash"]}}}


def start(apiserver, start_kube_gateway, tmp_path, metadata_host: str, vertex: FakeVertex):
    # No gcloud ADC file from the real home directory may be found.
    gw = start_kube_gateway(env={"GCE_METADATA_HOST": metadata_host, "HOME": str(tmp_path)})
    apiserver.apply(vertex_provider(vertex.url))
    apiserver.apply(proxy("team-a", ("vertex",)))
    assert wait_until(lambda: condition(apiserver.get("LlmProvider", NS, "vertex"), "CredentialsReady") is not None,
                      15), f"no CredentialsReady condition\n{gw.log_tail()}"
    return gw, apiserver.get("LlmProvider", NS, "vertex")


def chat(gw) -> str:
    client = openai.OpenAI(base_url=f"{gw.url}/v1/model-router/ai.team-a", api_key="unused", max_retries=0, timeout=15)
    r = client.chat.completions.create(model="vertexai:gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}])
    return r.choices[0].message.content


def test_credentials_ready_when_the_metadata_server_mints_a_token(apiserver, start_kube_gateway, tmp_path):
    book = TokenBook()
    mds, vertex = FakeMetadataServer(book).start(), FakeVertex(PROJECT, LOCATION, book).start()
    try:
        gw, pv = start(apiserver, start_kube_gateway, tmp_path, mds.host, vertex)
        assert cond_is(pv, "CredentialsReady", "True", "CredentialObtained"), condition(pv, "CredentialsReady")
        assert mds.token_requests(), "CredentialsReady=True without asking the metadata server"
        assert chat(gw) == "Hello from Vertex."
        assert vertex.model_requests()[-1].bearer in book.minted()
        status = str(pv["status"])
        assert not [t for t in book.minted() if t in status], "a token in the status"
    finally:
        mds.stop()
        vertex.stop()


def test_credentials_not_ready_when_no_token_can_be_obtained(apiserver, start_kube_gateway, tmp_path):
    book = TokenBook()
    vertex = FakeVertex(PROJECT, LOCATION, book).start()
    try:
        gw, pv = start(apiserver, start_kube_gateway, tmp_path, f"127.0.0.1:{closed_port()}", vertex)
        c = condition(pv, "CredentialsReady")
        assert (c["status"], c["reason"]) == ("False", "TokenExchangeFailed"), c
        assert "GCP" in c["message"], c
        # The route exists and says why it cannot serve; nothing reached Vertex.
        try:
            chat(gw)
            raise AssertionError("a request was served without a credential")
        except openai.APIStatusError as e:
            assert e.status_code == 502, e
        assert vertex.model_requests() == []
    finally:
        vertex.stop()
