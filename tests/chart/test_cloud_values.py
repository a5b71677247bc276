"""The per-cloud values files in charts/values/: each renders, validates against
Kubernetes, wires the keyless identity, and raises the load balancer's idle or
request timeout so long LLM streams are not cut."""

from __future__ import annotations

import json

import pytest
import yaml

import chartlib
from chartlib import render

VALUES_DIR = chartlib.REPO / "charts" / "values"
FILES = sorted(p.name for p in VALUES_DIR.glob("*.yaml"))


def load(name: str) -> dict:
    return yaml.safe_load((VALUES_DIR / name).read_text())


def test_every_cloud_has_a_values_file():
    assert FILES == ["aws-alb.yaml", "aws-nlb.yaml", "azure-agic.yaml", "gke.yaml"]


@pytest.mark.parametrize("version", chartlib.K8S_VERSIONS)
@pytest.mark.parametrize("name", FILES)
def test_cloud_values_render_and_validate(name, version):
    r = render(load(name))
    for obj in r.objects:
        chartlib.validate_k8s(obj, version)


@pytest.mark.parametrize("name", FILES)
def test_cloud_values_pass_helm_lint(name):
    report = chartlib.helm_lint(load(name), kube_version="v1.33.0")
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def idle_seconds(annotation: str) -> int:
    return int(annotation.rsplit("=", 1)[-1])


def test_aws_alb_idle_timeout_and_irsa():
    r = render(load("aws-alb.yaml"))
    sa = r.one("ServiceAccount")["metadata"]["annotations"]
    assert sa["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    ing = r.one("Ingress")
    assert ing["spec"]["ingressClassName"] == "alb"
    ann = ing["metadata"]["annotations"]
    assert ann["alb.ingress.kubernetes.io/load-balancer-attributes"].startswith("idle_timeout.timeout_seconds=")
    assert 600 <= idle_seconds(ann["alb.ingress.kubernetes.io/load-balancer-attributes"]) <= 4000
    assert ann["alb.ingress.kubernetes.io/healthcheck-path"] == "/readyz"
    assert ann["alb.ingress.kubernetes.io/healthcheck-port"] == "9090"
    (rule,) = ing["spec"]["rules"]
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": "portcullis", "port": {"number": 8080}}


def test_aws_nlb_listener_idle_timeout():
    r = render(load("aws-nlb.yaml"))
    svc = r.one("Service")
    assert svc["spec"]["type"] == "LoadBalancer"
    ann = svc["metadata"]["annotations"]
    # The listener attribute names the Service's data-plane port.
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "http")
    key = f"service.beta.kubernetes.io/aws-load-balancer-listener-attributes.TCP-{port}"
    assert ann[key].startswith("tcp.idle_timeout.seconds=")
    assert 60 <= idle_seconds(ann[key]) <= 6000
    assert ann["service.beta.kubernetes.io/aws-load-balancer-scheme"] == "internal"
    assert ann["service.beta.kubernetes.io/aws-load-balancer-healthcheck-path"] == "/readyz"


def test_gke_backend_config_timeout_and_workload_identity():
    r = render(load("gke.yaml"))
    sa = r.one("ServiceAccount")["metadata"]["annotations"]
    assert sa["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    bc = r.one("BackendConfig")
    assert bc["spec"]["timeoutSec"] >= 600
    assert bc["spec"]["healthCheck"]["requestPath"] == "/readyz"
    svc = r.one("Service")
    assert json.loads(svc["metadata"]["annotations"]["cloud.google.com/backend-config"]) == {
        "default": bc["metadata"]["name"]
    }
    assert r.one("Ingress")["spec"]["ingressClassName"] in ("gce", "gce-internal")
    # The pod outlives the gateway's drain, which outlives the load balancer's.
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 90 >= bc["spec"]["connectionDraining"]["drainingTimeoutSec"]


def test_azure_agic_request_timeout_and_workload_identity():
    r = render(load("azure-agic.yaml"))
    sa = r.one("ServiceAccount")["metadata"]["annotations"]
    assert "azure.workload.identity/client-id" in sa
    labels = r.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels["azure.workload.identity/use"] == "true"
    ing = r.one("Ingress")
    assert ing["spec"]["ingressClassName"] == "azure-application-gateway"
    ann = ing["metadata"]["annotations"]
    assert int(ann["appgw.ingress.kubernetes.io/request-timeout"]) >= 600
    assert ann["appgw.ingress.kubernetes.io/health-probe-path"] == "/readyz"
    assert ann["appgw.ingress.kubernetes.io/health-probe-port"] == "9090"
