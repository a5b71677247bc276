"""manifests/examples/: ready-to-apply manifests for every provider type.

Each file passes `portcullis check` on its own, its LlmProvider / LlmProxy
objects validate against our CRDs' schemas (CEL rules included) and its core
objects (Secrets) against Kubernetes' own; together they cover every provider
type and every keyless identity the contract names.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

import chartlib
import crdschema

EXAMPLES = chartlib.REPO / "manifests" / "examples"
FILES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
PLACEHOLDER = "REPLACE-WITH-YOUR-"


def objects(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def all_objects() -> list[tuple[str, dict[str, Any]]]:
    return [(name, o) for name in FILES for o in objects(name)]


def providers() -> list[tuple[str, dict[str, Any]]]:
    return [(n, o) for n, o in all_objects() if o["kind"] == "LlmProvider"]


def contract_types() -> list[str]:
    """The provider types the CRD accepts (generated from the Rust enum)."""
    schema = crdschema.crds()[("portcullis.dev/v1alpha1", "LlmProvider")]
    return schema["properties"]["spec"]["properties"]["type"]["enum"]


def test_examples_exist():
    assert len(FILES) >= 20, FILES


# --- portcullis check ---------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_portcullis_check_passes(name):
    binary = chartlib.binary_path()
    if not binary.exists():
        pytest.fail(f"{binary} does not exist: build it first (`cargo build`)")
    env = {"PATH": "/usr/bin:/bin"}  # no *_API_KEY or PORTCULLIS_* from the caller
    out = subprocess.run([str(binary), "check", str(EXAMPLES / name)], capture_output=True, text=True,
                         timeout=30, env=env)
    assert out.returncode == 0, f"portcullis check manifests/examples/{name}:\n{out.stderr}{out.stdout}"
    proxies = [o for o in objects(name) if o["kind"] == "LlmProxy"]
    for proxy in proxies:
        proxy_id = f"{proxy['metadata']['namespace']}.{proxy['metadata']['name']}"
        assert f"/v1/model-router/{proxy_id}/chat/completions" in out.stdout, out.stdout
    assert f"ok: {len(proxies)} proxy(ies), no problems" in out.stdout, out.stdout


# --- schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_custom_resources_validate_against_our_crds(name):
    custom = [o for o in objects(name) if crdschema.is_custom(o)]
    assert custom, f"{name} holds no LlmProvider / LlmProxy"
    for obj in custom:
        problems = crdschema.validate(obj)
        assert not problems, f"{name}: {obj['kind']}/{obj['metadata']['name']}: {problems}"
        assert obj["metadata"].get("namespace"), f"{name}: {obj['kind']} without a namespace"


@pytest.mark.parametrize("version", chartlib.K8S_VERSIONS)
def test_core_objects_validate_against_kubernetes(version):
    core = [(n, o) for n, o in all_objects() if not crdschema.is_custom(o)]
    assert core, "the examples hold Secrets"
    for name, obj in core:
        assert obj["kind"] == "Secret", f"{name}: unexpected {obj['kind']}"
        chartlib.validate_k8s(obj, version)


def test_crd_validator_refuses_bad_resources():
    """Guard: the schema check above can fail (typo'd field, CEL rule, wrong type, enum)."""
    good = objects("openai.yaml")[1]
    assert good["kind"] == "LlmProvider" and crdschema.validate(good) == []

    def broken(change) -> list[str]:
        obj = yaml.safe_load(yaml.safe_dump(good))
        change(obj["spec"])
        return crdschema.validate(obj)

    assert broken(lambda s: s.update(baseURL="https://x"))  # unknown field
    assert broken(lambda s: s.update(type="openia"))  # not in the enum
    assert broken(lambda s: s["auth"].update(none={}))  # CEL: exactly one auth form
    assert broken(lambda s: s.update(bedrock={"region": "us-east-1"}))  # CEL: bedrock block on openai
    assert broken(lambda s: s["models"].update(allow="gpt-*"))  # wrong type
    proxy = objects("multi-provider-proxy.yaml")[-1]
    assert proxy["kind"] == "LlmProxy" and crdschema.validate(proxy) == []
    bad = yaml.safe_load(yaml.safe_dump(proxy))
    bad["spec"]["providers"][0]["prefix"] = "Bad_Prefix"
    assert crdschema.validate(bad)
    bad["spec"]["providers"] = []
    assert crdschema.validate(bad)


# --- coverage of the contract ---------------------------------------------------------------


def test_every_provider_type_has_an_example():
    covered = {o["spec"]["type"] for _, o in providers()}
    missing = sorted(set(contract_types()) - covered)
    assert not missing, f"no example for provider type(s) {missing}"


def auth_form(provider: dict[str, Any]) -> str:
    (form,) = (provider["spec"].get("auth") or {"none": {}}).keys()
    return form


def find(pred) -> list[str]:
    return [f"{n}:{o['metadata']['name']}" for n, o in providers() if pred(o["spec"], o)]


@pytest.mark.parametrize(
    "what, pred",
    [
        ("Bedrock with IRSA / Pod Identity (workloadIdentity)",
         lambda s, o: s["type"] == "bedrock" and auth_form(o) == "workloadIdentity" and s["bedrock"]["region"]),
        ("Vertex AI with GKE Workload Identity",
         lambda s, o: s["type"] == "vertexai" and auth_form(o) == "workloadIdentity"
         and s["vertexai"]["project"] and s["vertexai"]["location"]),
        ("Azure OpenAI deployment URL with Azure Workload Identity",
         lambda s, o: s["type"] == "azure" and auth_form(o) == "workloadIdentity"
         and not s["baseUrl"].rstrip("/").endswith("/openai/v1") and s.get("azure", {}).get("apiVersion")),
        ("Azure AI Foundry v1 URL with Azure Workload Identity",
         lambda s, o: s["type"] == "azure" and auth_form(o) == "workloadIdentity"
         and s["baseUrl"].rstrip("/").endswith("/openai/v1")),
        ("Claude on Foundry (anthropic at a Foundry /anthropic URL, workloadIdentity)",
         lambda s, o: s["type"] == "anthropic" and auth_form(o) == "workloadIdentity"
         and ".services.ai.azure.com/anthropic" in s.get("baseUrl", "")),
        ("a local Ollama without credentials", lambda s, o: s["type"] == "ollama" and auth_form(o) == "none"),
        ("vLLM without credentials", lambda s, o: s["type"] == "vllm" and auth_form(o) == "none"),
    ],
)
def test_required_scenarios_are_covered(what, pred):
    assert find(pred), f"no example shows {what}"


def test_a_proxy_combines_several_providers():
    proxies = [(n, o) for n, o in all_objects() if o["kind"] == "LlmProxy"]
    combined = [(n, o) for n, o in proxies if len(o["spec"]["providers"]) >= 3]
    assert combined, "no example proxy combines several providers"
    name, proxy = combined[0]
    types = {o["metadata"]["name"]: o["spec"]["type"] for o in objects(name) if o["kind"] == "LlmProvider"}
    assert len({types[p["providerRef"]["name"]] for p in proxy["spec"]["providers"]}) >= 3


def test_secrets_hold_placeholders_only():
    for name, obj in all_objects():
        if obj["kind"] != "Secret":
            continue
        assert "data" not in obj, f"{name}: use stringData with a placeholder"
        for key, value in obj["stringData"].items():
            assert PLACEHOLDER in value, f"{name}: Secret {obj['metadata']['name']} key {key} is not a placeholder"


def test_secret_refs_point_into_the_same_file():
    for name in FILES:
        secrets = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects(name) if o["kind"] == "Secret"}
        for o in objects(name):
            if o["kind"] != "LlmProvider":
                continue
            for form in ("apiKey", "serviceAccountKey"):
                ref = ((o["spec"].get("auth") or {}).get(form) or {}).get("secretRef")
                if ref:
                    secret = secrets.get((o["metadata"]["namespace"], ref["name"]))
                    assert secret, f"{name}: {o['metadata']['name']} names Secret {ref['name']}, not in the file"
                    assert ref.get("key", "apiKey") in secret["stringData"], f"{name}: key {ref.get('key')}"


def test_file_comments_say_how_to_apply():
    for name in FILES:
        text = (EXAMPLES / name).read_text()
        assert f"kubectl apply -f manifests/examples/{name}" in text, name


def test_readme_lists_every_example():
    readme = (EXAMPLES / "README.md").read_text()
    for name in FILES:
        assert f"`{name}`" in readme, f"manifests/examples/README.md does not list {name}"


def test_keyless_examples_need_no_secret():
    for name in FILES:
        provs = [o for o in objects(name) if o["kind"] == "LlmProvider"]
        if all(auth_form(o) in ("workloadIdentity", "none") for o in provs):
            assert not [o for o in objects(name) if o["kind"] == "Secret"], f"{name} is keyless but holds a Secret"
