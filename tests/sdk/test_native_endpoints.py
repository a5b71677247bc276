"""Native routes are a security boundary (contract §4a): only each format's known endpoints are
forwarded, the model an endpoint names goes through `models.static` / `models.allow` (404) and
`spec.access` (403) exactly as on the Model Router, unknown endpoints and methods get 404
`unknown_endpoint` in the provider's own error shape, and `spec.passthrough` is the explicit
opt-in. Driven by the official SDKs; fakes: tests/sdk/fakes/guard_upstreams.py."""

from __future__ import annotations

import json
from typing import Any, Iterator

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from fakes.guard_upstreams import AgentModel
from harness import PROVIDER_KEY, docs, provider_doc, secret_doc

ANTHROPIC_KEY = "sk-ant-upstream-SECRET-e1d4"
GEMINI_KEY = "AIza-upstream-SECRET-93ab"
ALICE_KEY = "sk-alice-KEY-native-01"
BOB_KEY = "sk-bob-KEY-native-02"
HI = [{"role": "user", "content": "hi"}]


def config(model: AgentModel, passthrough: str = "", **spec: Any) -> str:
    proxy = {"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmProxy",
             "metadata": {"name": "team-a", "namespace": "ai"},
             "spec": {"providers": [{"providerRef": {"name": "openai"}}, {"providerRef": {"name": "anthropic"}},
                                    {"providerRef": {"name": "gemini"}}], **spec}}
    openai_provider = provider_doc("openai", f"{model.url}/v1", static=None, allow=["gpt-test*"])
    return docs(
        secret_doc("openai-key", PROVIDER_KEY),
        secret_doc("anthropic-key", ANTHROPIC_KEY),
        secret_doc("gemini-key", GEMINI_KEY),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: client-keys, namespace: ai}\n"
        f"stringData: {{alice: {ALICE_KEY}, bob: {BOB_KEY}}}\n",
        openai_provider + passthrough,
        provider_doc("anthropic", model.url, secret="anthropic-key", static=("claude-test",), type_="anthropic"),
        provider_doc("gemini", model.url, secret="gemini-key", static=("gemini-test",), type_="gemini"),
        json.dumps(proxy) + "\n",
    )


ACCESS = {
    "clientAuth": {"apiKeys": {"secretRef": {"name": "client-keys"}}},
    "access": [{"identities": ["alice"], "models": ["openai:gpt-test", "anthropic:claude-test", "gemini:gemini-test"]},
               {"identities": ["bob"], "models": ["openai:*"]}],
}


@pytest.fixture
def model() -> Iterator[AgentModel]:
    m = AgentModel().start()
    yield m
    m.stop()


def oai(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.native_base(prefix="openai"), api_key=key, max_retries=0, timeout=15)


def test_native_model_outside_access_is_403_and_outside_allow_is_404(model, start_gateway):
    gw = start_gateway(config(model, **ACCESS))
    alice = oai(gw, ALICE_KEY)
    alice.chat.completions.create(model="gpt-test", messages=HI)
    # Allowed by models.allow (gpt-test*), not by alice's access rule: 403 naming both.
    with pytest.raises(openai.PermissionDeniedError) as info:
        alice.chat.completions.create(model="gpt-test-mini", messages=HI)
    assert "alice" in str(info.value.body) and "openai:gpt-test-mini" in str(info.value.body)
    # Outside models.allow: 404 model_not_found, for anyone (bob may use openai:*).
    for who in (ALICE_KEY, BOB_KEY):
        with pytest.raises(openai.NotFoundError) as info:
            oai(gw, who).chat.completions.create(model="o3-pro", messages=HI)
        assert info.value.body["code"] == "model_not_found", info.value.body
    # The same checks on the other formats: Anthropic (body model), Gemini (path model).
    bob_anthropic = anthropic.Anthropic(base_url=gw.native_base(prefix="anthropic"), api_key=BOB_KEY, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError):
        bob_anthropic.messages.create(model="claude-test", max_tokens=5, messages=HI)
    alice_anthropic = anthropic.Anthropic(base_url=gw.native_base(prefix="anthropic"), api_key=ALICE_KEY,
                                          max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as ainfo:
        alice_anthropic.messages.create(model="claude-other", max_tokens=5, messages=HI)
    assert ainfo.value.body["type"] == "error", ainfo.value.body
    gem = genai.Client(api_key=ALICE_KEY, http_options=genai_types.HttpOptions(
        base_url=gw.native_base(prefix="gemini"), timeout=15_000))
    with pytest.raises(genai_errors.ClientError) as ginfo:
        gem.models.generate_content(model="gemini-other", contents="x")
    assert ginfo.value.code == 404 and ginfo.value.status == "NOT_FOUND"
    # Only the one allowed call reached each upstream API.
    assert len(model.calls("/v1/chat/completions")) == 1
    assert not model.calls("/v1/messages")


@pytest.mark.parametrize("method,path", [
    ("DELETE", "files/file-abc"),
    ("TRACE", "chat/completions"),
    ("GET", "files"),
    ("POST", "assistants"),
    ("PUT", "chat/completions"),
])
def test_unknown_openai_endpoints_and_methods_are_404_unknown_endpoint(model, start_gateway, method, path):
    gw = start_gateway(config(model))
    r = gw.raw(method, f"/v1/openai/ai.team-a/{path}")
    assert r.status == 404, r.text
    if method != "HEAD":
        body = r.json()
        assert body["error"]["code"] == "unknown_endpoint", body
        assert "chat/completions" in body["error"]["message"], "the message names the known endpoints"
    assert not model.calls(f"/v1/{path}"), "nothing reached the upstream"


def test_unknown_endpoints_answer_in_the_providers_shape(model, start_gateway):
    gw = start_gateway(config(model))
    # Anthropic: an OpenAI-compatible path under the Anthropic base URL is another format.
    r = gw.raw("POST", "/v1/anthropic/ai.team-a/v1/chat/completions", {"model": "claude-test", "messages": HI})
    assert r.status == 404 and r.json()["type"] == "error", r.text
    assert r.json()["error"]["type"] == "not_found_error"
    # Gemini: its OpenAI-compatible surface is not forwarded either.
    r = gw.raw("POST", "/v1/gemini/ai.team-a/v1beta/openai/chat/completions", {"model": "gemini-test", "messages": HI})
    assert r.status == 404 and r.json()["error"]["status"] == "NOT_FOUND", r.text
    assert not model.calls("/v1/chat/completions") and not model.calls("/v1beta/openai/chat/completions")


def test_encoded_fixed_segments_are_refused(model, start_gateway):
    gw = start_gateway(config(model))
    for path in ("/v1/openai/ai.team-a/respons%65s", "/v1/openai/ai.team-a/chat/complet%69ons"):
        r = gw.raw("POST", path, {"model": "gpt-test", "input": "hi"})
        assert r.status == 400 and r.json()["error"]["code"] == "invalid_path", r.text
    assert not model.calls("/v1/responses") and not model.calls("/v1/chat/completions")


def test_passthrough_is_the_explicit_opt_in(model, start_gateway):
    rule = "  passthrough: [{methods: [GET, DELETE], path: \"files/*\"}]\n"
    gw = start_gateway(config(model, passthrough=rule, **ACCESS))
    # bob's access covers openai:*, so the pass-through endpoint is served to him.
    r = gw.raw("DELETE", "/v1/openai/ai.team-a/files/file-abc", headers={"Authorization": f"Bearer {BOB_KEY}"})
    assert r.status != 404 or r.json().get("error", {}).get("code") != "unknown_endpoint", r.text
    assert [c.method for c in model.calls("/v1/files/file-abc")] == ["DELETE"]
    # alice may use only some openai models: a pass-through endpoint is not hers.
    r = gw.raw("DELETE", "/v1/openai/ai.team-a/files/file-abc", headers={"Authorization": f"Bearer {ALICE_KEY}"})
    assert r.status == 403, r.text
    # Methods and paths outside the rule stay refused.
    r = gw.raw("POST", "/v1/openai/ai.team-a/files/file-abc", headers={"Authorization": f"Bearer {BOB_KEY}"})
    assert r.status == 404 and r.json()["error"]["code"] == "unknown_endpoint", r.text
    assert len(model.calls("/v1/files/file-abc")) == 1


def test_passthrough_is_never_served_under_tool_guardrails(model, start_gateway):
    rule = "  passthrough: [{methods: [GET], path: \"files/*\"}]\n"
    tools = {"policies": [{"tools": ["shell"], "action": "block"}]}
    gw = start_gateway(config(model, passthrough=rule, tools=tools))
    r = gw.raw("GET", "/v1/openai/ai.team-a/files/file-abc")
    assert r.status == 400 and r.json()["error"]["code"] == "guardrail_unsupported", r.text
    # Responses answers carry tool calls the guard cannot read yet: refused under spec.tools.
    r = gw.raw("POST", "/v1/openai/ai.team-a/responses", {"model": "gpt-test", "input": "hi"})
    assert r.status == 400 and r.json()["error"]["code"] == "guardrail_unsupported", r.text
    assert not model.calls("/v1/files/file-abc") and not model.calls("/v1/responses")
