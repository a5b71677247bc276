"""Render the Portcullis chart with the real Helm engine, offline, and check
the objects against Kubernetes' OpenAPI schemas.

The engine is Helm's own Go SDK (v4) bundled as a shared library by the PyPI
package ``helm-python-sdk`` (import name ``helm_python``); no ``helm`` binary,
cluster or network is involved. The Kubernetes schemas come from the PyPI
package ``kubernetes-validate``, which ships them for each Kubernetes minor.

Used by the tests in this folder and by ``render_install.py``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "portcullis"
CHART_CRDS = CHART / "crds"
REPO_CRDS = REPO / "crds"
INSTALL_YAML = REPO / "manifests" / "install.yaml"

#: Release name and namespace of manifests/install.yaml (and the default in tests).
RELEASE = "portcullis"
NAMESPACE = "portcullis"

#: Kubernetes versions every rendered object must validate against: the
#: chart's floor (Chart.yaml kubeVersion) and the newest the schemas ship.
K8S_VERSIONS = ["1.28", kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version())]

#: Kinds that are not part of Kubernetes itself (CRDs of other projects), so
#: kubernetes-validate has no schema for them; tests check their shape by hand.
FOREIGN_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("cloud.google.com/v1", "BackendConfig"),
}

#: Helm's install order (helm.sh/helm/v4/pkg/release/v1/util/kind_sorter.go),
#: so install.yaml applies in the order `helm install` would.
INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    "PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret",
    "SecretList", "ConfigMap", "StorageClass", "PersistentVolume",
    "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
    "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role",
    "RoleList", "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod",
    "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler",
    "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]


@dataclass
class Render:
    """One render of the chart: its objects (hooks included), hooks apart, and NOTES.txt."""

    objects: list[dict[str, Any]]
    notes: str
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def manifests(self) -> list[dict[str, Any]]:
        """Objects `helm install` creates (no hooks)."""
        return [o for o in self.objects if not is_hook(o)]

    @property
    def hooks(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if is_hook(o)]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.manifests if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}: {found}"
        return found[0]


def is_hook(obj: dict[str, Any]) -> bool:
    return "helm.sh/hook" in (obj.get("metadata", {}).get("annotations") or {})


def load_chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(
    values: dict[str, Any] | None = None,
    *,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
) -> Render:
    """Render like `helm template NAME charts/portcullis -n NAMESPACE -f values`.

    Schema validation (values.schema.json) runs inside the engine; a bad value
    raises ``helm_python.HelmValuesError``, a template `fail` raises
    ``helm_python.HelmRenderError``.
    """
    with load_chart() as chart:
        rendered = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    notes = ""
    sources: dict[str, str] = {}
    for path in sorted(rendered):
        text = rendered[path]
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        sources[path] = text
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return Render(objects=objects, notes=notes, sources=sources)


def chart_crd_files() -> list[Path]:
    return sorted(p for p in CHART_CRDS.glob("*") if p.suffix in (".yaml", ".yml", ".json"))


def install_order_key(obj: dict[str, Any]) -> tuple[int, str, str]:
    kind = obj["kind"]
    rank = INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)
    meta = obj.get("metadata", {})
    return (rank, meta.get("namespace", ""), meta.get("name", ""))


def render_install_yaml() -> str:
    """manifests/install.yaml: the chart with default values, release
    `portcullis` in namespace `portcullis`, for `kubectl apply -f`.

    Adds what `helm install --create-namespace` would do beyond the templates:
    the Namespace and the chart's CRDs. Leaves out hooks (the `helm test` pod)
    and NOTES.txt.
    """
    r = render()
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {
                "app.kubernetes.io/name": "portcullis",
                "app.kubernetes.io/part-of": "portcullis",
            },
        },
    }
    crds: list[dict[str, Any]] = []
    for path in chart_crd_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                crds.append(doc)
    objects = [namespace, *crds, *r.manifests]
    objects.sort(key=install_order_key)
    header = (
        "# Portcullis: everything `kubectl apply -f` needs, in one file.\n"
        "# GENERATED from charts/portcullis with default values (release \"portcullis\",\n"
        "# namespace \"portcullis\") by `python tests/chart/render_install.py`.\n"
        "# Do not edit by hand: tests/chart fails when this file drifts from the chart.\n"
    )
    body = "---\n".join(
        yaml.safe_dump(o, sort_keys=False, default_flow_style=False, width=1000) for o in objects
    )
    return header + "---\n" + body


def validate_k8s(obj: dict[str, Any], version: str) -> None:
    """Validate one object against Kubernetes' OpenAPI schema (strict: unknown
    fields are errors). Raises AssertionError with the path of the problem."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in FOREIGN_KINDS:
        check_foreign(obj)
        return
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        name = obj.get("metadata", {}).get("name")
        raise AssertionError(
            f"{obj['kind']}/{name} is not valid Kubernetes {version}: {path}: {e.message}"
        ) from None
    except kubernetes_validate.SchemaNotFoundError as e:
        raise AssertionError(f"no Kubernetes {version} schema for {key}: {e.message}") from None


def check_foreign(obj: dict[str, Any]) -> None:
    """Shape checks for the non-Kubernetes kinds the chart can render."""
    meta = obj["metadata"]
    assert meta.get("name") and meta.get("namespace"), obj
    spec = obj["spec"]
    if obj["kind"] == "ServiceMonitor":
        assert spec["selector"]["matchLabels"], obj
        for ep in spec["endpoints"]:
            assert set(ep) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}, ep
    elif obj["kind"] == "BackendConfig":
        assert isinstance(spec["timeoutSec"], int), obj
        assert set(spec) <= {"timeoutSec", "connectionDraining", "healthCheck"}, spec
        assert set(spec["healthCheck"]) <= {
            "checkIntervalSec", "timeoutSec", "healthyThreshold",
            "unhealthyThreshold", "type", "requestPath", "port",
        }, spec


def helm_lint(values: dict[str, Any] | None = None, kube_version: str | None = None) -> dict[str, Any]:
    return helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=kube_version)


def engine_versions() -> str:
    return f"helm-c {helm.helm_c_version()}, Helm SDK {helm.helm_sdk_version()}"


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)


def binary_path() -> Path:
    """The debug binary the test runner builds first (override: PORTCULLIS_BIN)."""
    override = os.environ.get("PORTCULLIS_BIN")
    return Path(override) if override else REPO / "target" / "debug" / "portcullis"
