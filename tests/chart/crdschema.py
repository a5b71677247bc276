"""Validate custom resources against our CRDs' schemas, offline, the way the API
server would on `kubectl apply`:

* the version's ``openAPIV3Schema`` as JSON Schema (``nullable`` honoured, the
  ``x-kubernetes-*`` keywords set aside);
* unknown fields refused (kubectl's default strict field validation), except
  under ``x-kubernetes-preserve-unknown-fields``;
* every ``x-kubernetes-validations`` CEL rule evaluated with ``self`` bound to
  the value it is attached to (``cel-python``).

Used by test_examples.py.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import celpy
import jsonschema
import yaml

from chartlib import REPO_CRDS


@lru_cache(maxsize=None)
def crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the version's openAPIV3Schema."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(Path(REPO_CRDS).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                out[key] = version["schema"]["openAPIV3Schema"]
    return out


def is_custom(obj: dict[str, Any]) -> bool:
    return (obj.get("apiVersion"), obj.get("kind")) in crds()


def to_json_schema(node: Any) -> Any:
    """OpenAPI v3 structural schema -> JSON Schema with unknown fields refused."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items()
           if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (node.get("type") == "object" and "properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def cel_rules(schema: dict[str, Any], value: Any, path: str = "") -> Iterator[tuple[str, dict, Any]]:
    """(path, rule, value) for each CEL rule that applies to a present value."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule, value
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in value and value[name] is not None:
                yield from cel_rules(sub, value[name], f"{path}.{name}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            yield from cel_rules(schema["items"], item, f"{path}[{i}]")


@lru_cache(maxsize=None)
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def validate(obj: dict[str, Any]) -> list[str]:
    """Every problem the API server would report for this custom resource."""
    schema = crds()[(obj["apiVersion"], obj["kind"])]
    problems: list[str] = []
    meta = obj.get("metadata") or {}
    if not meta.get("name"):
        problems.append("metadata.name is missing")
    # apiVersion, kind and metadata are the API server's own (ObjectMeta), not the CRD's.
    body = {k: v for k, v in copy.deepcopy(obj).items() if k not in ("apiVersion", "kind", "metadata")}
    validator = jsonschema.Draft7Validator(to_json_schema(schema))
    for err in sorted(validator.iter_errors(body), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in err.path) or "(root)"
        problems.append(f"{where}: {err.message}")
    for path, rule, value in cel_rules(schema, body):
        try:
            ok = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as e:
            problems.append(f"{path or '(root)'}: CEL rule {rule['rule']!r} failed to evaluate: {e}")
            continue
        if not bool(ok):
            problems.append(f"{path or '(root)'}: {rule.get('message', rule['rule'])}")
    return problems
