"""`serve --kubernetes` with a keyless cloud provider: `CredentialsReady` says whether a
credential was really obtained. Vertex AI with workload identity, the token served by a fake
GCE metadata server (`GCE_METADATA_HOST`, as on GKE) that works, or that is not there."""

from __future__ import annotations

import socket
import time

import openai
import pytest

from fakes.cloud import FakeMetadataServer, FakeVertex, TokenBook
from harness import closed_port
from objects import NS, cond_is, condition, provider, proxy, secret, wait_until

# Minted credentials may go to the fakes on 127.0.0.1 only because the operator says so.
pytestmark = pytest.mark.usefixtures("trust_loopback_identity")


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
    # `Unknown` (Pending) while the check runs in the background, then its outcome.
    assert wait_until(lambda: (condition(apiserver.get("LlmProvider", NS, "vertex"), "CredentialsReady") or {})
                      .get("status") in ("True", "False"), 15), f"no CredentialsReady outcome\n{gw.log_tail()}"
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


def test_a_hanging_identity_endpoint_delays_no_other_status(apiserver, start_kube_gateway, tmp_path, fake):
    """A metadata server that accepts connections and never answers: the Vertex provider's
    credential check hangs (up to its 15 s timeout), yet another proxy's `Programmed=True` is
    written at once, and the hanging check's outcome still lands in the status when it ends."""
    hang = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)  # the kernel completes the handshakes; nobody ever reads or answers
    book = TokenBook()
    vertex = FakeVertex(PROJECT, LOCATION, book).start()
    try:
        start_kube_gateway(env={"GCE_METADATA_HOST": f"127.0.0.1:{hang.getsockname()[1]}",
                                "HOME": str(tmp_path)})
        apiserver.apply(vertex_provider(vertex.url))
        apiserver.apply(proxy("team-vertex", ("vertex",)))
        # Let the writer start the Vertex check before the other proxy appears.
        assert wait_until(lambda: condition(apiserver.get("LlmProvider", NS, "vertex"), "Accepted") is not None, 5), \
            "no status written for the Vertex provider within 5 s: the pass waits on its credential check"
        t0 = time.monotonic()
        apiserver.apply(secret("openai-key", "sk-upstream-hang-test"))
        apiserver.apply(provider("openai", fake.base_url))
        apiserver.apply(proxy("team-a", ("openai",)))
        # Both proxies (the Vertex one too: its route serves, and its provider's check is no
        # reason to hold its status back).
        waited = wait_until(lambda: all(cond_is(apiserver.get("LlmProxy", NS, p), "Programmed", "True")
                                        for p in ("team-a", "team-vertex")), 10)
        assert waited is not None, "the proxies never became Programmed=True"
        assert time.monotonic() - t0 < 3.0, f"Programmed=True took {time.monotonic() - t0:.1f}s"
        assert cond_is(apiserver.get("LlmProvider", NS, "openai"), "CredentialsReady", "True", "KeyPresent")
        c = condition(apiserver.get("LlmProvider", NS, "vertex"), "CredentialsReady")
        assert c is not None and (c["status"], c["reason"]) == ("Unknown", "Pending"), c
        # The check keeps its timeout, and its failure is written when it ends.
        assert wait_until(lambda: cond_is(apiserver.get("LlmProvider", NS, "vertex"), "CredentialsReady",
                                          "False", "TokenExchangeFailed"), 25), \
            condition(apiserver.get("LlmProvider", NS, "vertex"), "CredentialsReady")
        assert book.minted() == []
    finally:
        hang.close()
        vertex.stop()
