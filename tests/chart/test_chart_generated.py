"""Generated files stay in step with their sources: the chart's CRDs with the
repository's crds/, and manifests/install.yaml with the chart."""

from __future__ import annotations

import pytest
import yaml

import chartlib

SYNC = "run charts/sync-crds.sh (copies crds/ into the chart and re-renders manifests/install.yaml)"


def test_repo_crds_exist():
    files = sorted(chartlib.REPO_CRDS.glob("*.yaml"))
    if not files:
        pytest.fail(
            "crds/ holds no CRD YAML yet: generate it with `portcullis crds` "
            f"(e.g. `cargo run -- crds > crds/portcullis.dev.yaml`), then {SYNC}"
        )
    kinds = set()
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert doc["kind"] == "CustomResourceDefinition", path
                kinds.add(doc["spec"]["names"]["kind"])
    assert {"LlmProvider", "LlmProxy"} <= kinds, kinds


def test_chart_crds_equal_repo_crds():
    repo = {p.name: p.read_text() for p in chartlib.REPO_CRDS.glob("*.yaml")}
    chart = {p.name: p.read_text() for p in chartlib.chart_crd_files()}
    if not repo:
        pytest.fail(f"crds/ is missing or empty, so the chart ships no CRDs: {SYNC} once it exists")
    assert sorted(chart) == sorted(repo), f"charts/portcullis/crds/ files differ from crds/: {SYNC}"
    for name in repo:
        assert chart[name] == repo[name], f"charts/portcullis/crds/{name} differs from crds/{name}: {SYNC}"


def test_chart_ships_crds_through_helm():
    """Helm itself finds the CRDs in the chart (installed before templates)."""
    with chartlib.load_chart() as chart:
        names = sorted(c["name"] for c in chart.crds)
    expected = sorted(f"crds/{p.name}" for p in chartlib.REPO_CRDS.glob("*.yaml"))
    if not expected:
        pytest.fail(f"crds/ is missing or empty: {SYNC} once it exists")
    assert names == expected


@pytest.mark.parametrize("version", chartlib.K8S_VERSIONS)
def test_chart_crds_validate_against_kubernetes(version):
    files = chartlib.chart_crd_files()
    if not files:
        pytest.fail(f"charts/portcullis/crds/ is empty: {SYNC}")
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                chartlib.validate_k8s(doc, version)


def test_install_yaml_is_the_default_render():
    expected = chartlib.render_install_yaml()
    assert chartlib.INSTALL_YAML.exists(), "manifests/install.yaml is missing: run tests/chart/render_install.py"
    actual = chartlib.INSTALL_YAML.read_text()
    assert actual == expected, "manifests/install.yaml is stale: run .venv/bin/python tests/chart/render_install.py"


@pytest.mark.parametrize("version", chartlib.K8S_VERSIONS)
def test_install_yaml_validates_against_kubernetes(version):
    objects = [d for d in yaml.safe_load_all(chartlib.INSTALL_YAML.read_text()) if d]
    assert objects[0]["kind"] == "Namespace" and objects[0]["metadata"]["name"] == chartlib.NAMESPACE
    kinds = [o["kind"] for o in objects]
    assert "Deployment" in kinds and "Service" in kinds
    assert not [o for o in objects if chartlib.is_hook(o)], "no helm hooks in install.yaml"
    for obj in objects:
        chartlib.validate_k8s(obj, version)
    # CRDs come before anything else but the Namespace, as in `helm install`.
    crd_positions = [i for i, k in enumerate(kinds) if k == "CustomResourceDefinition"]
    if crd_positions:
        first_other = min(i for i, k in enumerate(kinds) if k not in ("Namespace", "ServiceAccount", "CustomResourceDefinition"))
        assert max(crd_positions) < first_other


def test_chart_app_version_is_the_crate_version():
    """The image tag defaults to appVersion: it must name the release the crate builds."""
    import tomllib

    crate = tomllib.loads((chartlib.REPO / "Cargo.toml").read_text())["package"]["version"]
    chart = yaml.safe_load((chartlib.CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == crate, f"Chart.yaml appVersion {chart['appVersion']} != Cargo.toml version {crate}"
    dockerfile = (chartlib.REPO / "Dockerfile").read_text()
    assert f"ARG VERSION={crate}" in dockerfile, "the Dockerfile's OCI version label default"
