"""The chart's `otel` values: the standard OTEL_* variables on the gateway container."""

from __future__ import annotations

import helm_python as helm
import pytest

import chartlib
from chartlib import RELEASE, render


def env_of(r: chartlib.Render) -> dict[str, dict]:
    (c,) = r.one("Deployment")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in c.get("env", [])}


def test_no_otel_variables_by_default(default_render):
    assert not [n for n in env_of(default_render) if n.startswith("OTEL_")]


def test_otel_values_set_the_standard_variables():
    r = render({"otel": {
        "endpoint": "http://otel-collector.observability:4318",
        "sampler": "parentbased_traceidratio",
        "samplerArg": "0.25",
        "resourceAttributes": {"deployment.environment.name": "prod", "team": "platform"},
        "headersSecretRef": {"name": "honeycomb", "key": "otlp-headers"},
    }})
    env = env_of(r)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.observability:4318"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "http/protobuf"
    assert env["OTEL_SERVICE_NAME"]["value"] == RELEASE
    assert env["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.25"
    assert env["OTEL_RESOURCE_ATTRIBUTES"]["value"] == (
        "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME),"
        "deployment.environment.name=prod,team=platform")
    # The headers (an API key) come from a Secret, never from the values.
    assert env["OTEL_EXPORTER_OTLP_HEADERS"] == {
        "name": "OTEL_EXPORTER_OTLP_HEADERS",
        "valueFrom": {"secretKeyRef": {"name": "honeycomb", "key": "otlp-headers"}}}
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" not in env
    # $(POD_NAME) / $(POD_NAMESPACE) expand only when defined earlier in the list.
    names = list(env)
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    assert names.index("POD_NAMESPACE") < names.index("OTEL_RESOURCE_ATTRIBUTES")


def test_traces_endpoint_and_service_name():
    env = env_of(render({"otel": {"tracesEndpoint": "https://api.honeycomb.io/v1/traces",
                                  "serviceName": "llm-gateway"}}))
    assert env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]["value"] == "https://api.honeycomb.io/v1/traces"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    assert env["OTEL_SERVICE_NAME"]["value"] == "llm-gateway"
    assert env["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_always_on"
    assert "OTEL_TRACES_SAMPLER_ARG" not in env and "OTEL_EXPORTER_OTLP_HEADERS" not in env


def test_otel_render_validates_against_kubernetes():
    r = render({"otel": {"endpoint": "http://c:4318", "headersSecretRef": {"name": "s", "key": "k"}}})
    chartlib.validate_k8s(r.one("Deployment"), "1.33.0")


@pytest.mark.parametrize("values, where", [
    ({"otel": {"endpoint": "otel-collector:4318"}}, "/otel/endpoint"),
    ({"otel": {"sampler": "sometimes"}}, "/otel/sampler"),
    ({"otel": {"samplerArg": "1.5"}}, "/otel/samplerArg"),
    ({"otel": {"samplerArg": 0.5}}, "/otel/samplerArg"),
    ({"otel": {"resourceAttributes": {"a": "x,y=z"}}}, "/otel/resourceAttributes/a"),
    ({"otel": {"protocol": "grpc"}}, "protocol"),
])
def test_schema_refuses_bad_otel_values(values, where):
    with pytest.raises(helm.HelmValuesError) as err:
        render(values)
    assert where in str(err.value), str(err.value)


def test_half_a_secret_ref_is_refused():
    with pytest.raises(helm.HelmRenderError, match="needs both name and key"):
        render({"otel": {"endpoint": "http://c:4318", "headersSecretRef": {"name": "s"}}})
