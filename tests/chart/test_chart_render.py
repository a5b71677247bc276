"""The chart, rendered by the real Helm engine (helm-python-sdk), offline."""

from __future__ import annotations

import json
import re

import helm_python as helm
import pytest

import chartlib
from chartlib import NAMESPACE, RELEASE, render

ROLE_ARN = "arn:aws:iam::111122223333:role/portcullis"
GSA = "portcullis@my-project.iam.gserviceaccount.com"
AZ_CLIENT = "8f6b1b0e-1a2b-4c3d-9e8f-0123456789ab"

STANDARD_LABELS = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
]

EVERYTHING_ON = {
    "podDisruptionBudget": {"enabled": True},
    "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "networkPolicy": {"enabled": True},
    "ingress": {
        "enabled": True,
        "className": "alb",
        "annotations": {
            "alb.ingress.kubernetes.io/load-balancer-attributes": "idle_timeout.timeout_seconds=3600"
        },
        "tls": [{"secretName": "portcullis-tls", "hosts": ["portcullis.example.com"]}],
    },
    "gke": {"backendConfig": {"enabled": True}},
    "identity": {
        "aws": {"roleArn": ROLE_ARN},
        "gcp": {"serviceAccount": GSA},
        "azure": {"clientId": AZ_CLIENT},
    },
    "serviceAccount": {"annotations": {"example.com/owner": "platform"}},
    "extraEnv": [{"name": "PORTCULLIS_EXTRA_CA_CERTS", "value": "/etc/ssl/extra/ca.pem"}],
    "extraVolumes": [{"name": "ca", "configMap": {"name": "extra-ca"}}],
    "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/extra", "readOnly": True}],
    "service": {"type": "LoadBalancer"},
    "budgets": {"redis": {"url": "redis://redis.shared.svc:6379/0", "namespaces": ["ai"]}},
}

VALUE_SETS = {
    "default": {},
    "everything-on": EVERYTHING_ON,
    "watch-namespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "aws": {"identity": {"aws": {"roleArn": ROLE_ARN}}},
    "gcp": {"identity": {"gcp": {"serviceAccount": GSA}}},
    "azure": {"identity": {"azure": {"clientId": AZ_CLIENT}}},
}


def container(r: chartlib.Render) -> dict:
    (c,) = r.one("Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def pod_spec(r: chartlib.Render) -> dict:
    return r.one("Deployment")["spec"]["template"]["spec"]


# --- default render ---------------------------------------------------------


def test_default_render_has_exactly_the_core_objects(default_render):
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in default_render.manifests)
    assert kinds == sorted(
        [
            ("ServiceAccount", "portcullis"),
            ("Service", "portcullis"),
            ("Deployment", "portcullis"),
            ("ClusterRole", "portcullis"),
            ("ClusterRoleBinding", "portcullis"),
            ("ClusterRole", "portcullis-tokenreview"),
            ("ClusterRoleBinding", "portcullis-tokenreview"),
            ("Role", "portcullis-leader-election"),
            ("RoleBinding", "portcullis-leader-election"),
        ]
    ), kinds


def test_every_object_has_standard_labels_and_namespace(default_render):
    for obj in default_render.objects:
        labels = obj["metadata"].get("labels", {})
        for key in STANDARD_LABELS:
            assert key in labels, f"{obj['kind']}/{obj['metadata']['name']} lacks label {key}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE


def test_selectors_match_pod_labels(default_render):
    dep = default_render.one("Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "portcullis", "app.kubernetes.io/instance": RELEASE}
    assert selector.items() <= pod_labels.items()
    assert default_render.one("Service")["spec"]["selector"] == selector


def test_deployment_runs_serve_kubernetes_with_both_ports(default_render):
    c = container(default_render)
    assert "command" not in c, "the image ENTRYPOINT (/usr/local/bin/portcullis) must run"
    assert c["args"] == [
        "serve", "--kubernetes",
        "--listen", "0.0.0.0:8080",
        "--admin-listen", "0.0.0.0:9090",
        "--shutdown-grace", "30s",
        "--sse-keepalive", "10s",
        "--header-read-timeout", "30s",
        "--max-header-bytes", "65536",
        "--max-headers", "100",
    ]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "admin": 9090}
    assert default_render.one("Deployment")["spec"]["replicas"] == 2


def test_controller_environment(default_render):
    """What the controller reads: its pod (Lease holder identity, Lease namespace) and
    the Service name it writes into LlmProxy status.url."""
    env = {e["name"]: e for e in container(default_render)["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["PORTCULLIS_SERVICE_NAME"] == {"name": "PORTCULLIS_SERVICE_NAME", "value": "portcullis"}
    assert env["PORTCULLIS_SERVICE_NAME"]["value"] == default_render.one("Service")["metadata"]["name"]
    assert env["PORTCULLIS_SERVICE_PORT"] == {"name": "PORTCULLIS_SERVICE_PORT", "value": "8080"}
    assert env["PORTCULLIS_LEASE_NAME"] == {"name": "PORTCULLIS_LEASE_NAME", "value": "portcullis-status"}
    r = render({"service": {"port": 80}}, name="gw", namespace="llm")
    env = {e["name"]: e for e in container(r)["env"]}
    assert env["PORTCULLIS_SERVICE_NAME"]["value"] == r.one("Service")["metadata"]["name"] == "gw-portcullis"
    http = next(p for p in r.one("Service")["spec"]["ports"] if p["name"] == "http")
    assert env["PORTCULLIS_SERVICE_PORT"]["value"] == str(http["port"]) == "80"
    assert env["PORTCULLIS_LEASE_NAME"]["value"] == "gw-portcullis-status"
    # Service links would put PORTCULLIS_SERVICE_HOST, PORTCULLIS_PORT... into our env prefix.
    assert pod_spec(default_render)["enableServiceLinks"] is False


@pytest.mark.parametrize("value", ["0", "500ms", "30s", "2m"])
def test_sse_keepalive_is_passed_to_the_gateway(value):
    args = container(render({"sseKeepAlive": value}))["args"]
    i = args.index("--sse-keepalive")
    assert args[i + 1] == value


def test_probes_hit_health_endpoints_on_admin_port(default_render):
    c = container(default_render)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    admin = next(p for p in c["ports"] if p["name"] == "admin")
    assert admin["containerPort"] == 9090


def test_service_exposes_data_plane_and_admin(default_render):
    svc = default_render.one("Service")
    assert svc["spec"]["type"] == "ClusterIP"
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports == {"http": (8080, "http"), "admin": (9090, "admin")}


def test_termination_grace_outlasts_stream_grace():
    r = render()
    assert pod_spec(r)["terminationGracePeriodSeconds"] > 30
    r = render({"shutdownGraceSeconds": 600})
    assert "600s" in container(r)["args"]
    assert pod_spec(r)["terminationGracePeriodSeconds"] == 615
    r = render({"shutdownGraceSeconds": 60, "terminationGracePeriodSeconds": 90})
    assert pod_spec(r)["terminationGracePeriodSeconds"] == 90


def test_termination_grace_not_above_stream_grace_is_refused():
    with pytest.raises(helm.HelmRenderError, match="must be larger than shutdownGraceSeconds"):
        render({"shutdownGraceSeconds": 60, "terminationGracePeriodSeconds": 60})
    with pytest.raises(helm.HelmRenderError, match=r"preStopSleepSeconds \(70\)"):
        render({"shutdownGraceSeconds": 60, "preStopSleepSeconds": 10, "terminationGracePeriodSeconds": 65})


def test_no_pre_stop_hook_by_default(default_render):
    assert "lifecycle" not in container(default_render)


def test_pre_stop_sleep_delays_sigterm_and_extends_the_grace():
    r = render({"preStopSleepSeconds": 5, "shutdownGraceSeconds": 60})
    c = container(r)
    # The image has no shell: the preStop `sleep` action, not `exec: sleep`.
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert pod_spec(r)["terminationGracePeriodSeconds"] == 5 + 60 + 15
    # The sleep action exists from Kubernetes 1.30 on.
    for obj in r.objects:
        chartlib.validate_k8s(obj, chartlib.K8S_VERSIONS[-1])


def test_security_context_is_locked_down(default_render):
    pod = pod_spec(default_render)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(default_render)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc.get("privileged") in (None, False)
    # A read-only root filesystem still gets a writable /tmp.
    mounts = {m["mountPath"] for m in container(default_render)["volumeMounts"]}
    assert "/tmp" in mounts


def test_resources_and_topology_spread(default_render):
    res = container(default_render)["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]
    spread = pod_spec(default_render)["topologySpreadConstraints"]
    keys = {c["topologyKey"] for c in spread}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    selector = default_render.one("Deployment")["spec"]["selector"]["matchLabels"]
    for c in spread:
        assert c["labelSelector"]["matchLabels"] == selector


def test_replica_count_is_configurable():
    assert render({"replicaCount": 5}).one("Deployment")["spec"]["replicas"] == 5


# --- keyless cloud identity ---------------------------------------------------


@pytest.mark.parametrize(
    "values, annotation, value",
    [
        ({"aws": {"roleArn": ROLE_ARN}}, "eks.amazonaws.com/role-arn", ROLE_ARN),
        ({"gcp": {"serviceAccount": GSA}}, "iam.gke.io/gcp-service-account", GSA),
        ({"azure": {"clientId": AZ_CLIENT}}, "azure.workload.identity/client-id", AZ_CLIENT),
    ],
    ids=["aws-irsa", "gke-workload-identity", "azure-workload-identity"],
)
def test_identity_annotates_service_account(values, annotation, value):
    r = render({"identity": values})
    sa = r.one("ServiceAccount")
    assert sa["metadata"]["annotations"] == {annotation: value}
    pod_labels = r.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    if annotation.startswith("azure."):
        assert pod_labels["azure.workload.identity/use"] == "true"
    else:
        assert "azure.workload.identity/use" not in pod_labels
    assert pod_spec(r)["serviceAccountName"] == sa["metadata"]["name"]


def test_no_identity_by_default(default_render):
    sa = default_render.one("ServiceAccount")
    assert "annotations" not in sa["metadata"]
    pod_labels = default_render.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert "azure.workload.identity/use" not in pod_labels


def test_azure_tenant_and_free_form_annotations_merge():
    r = render(
        {
            "identity": {"azure": {"clientId": AZ_CLIENT, "tenantId": AZ_CLIENT}},
            "serviceAccount": {"annotations": {"example.com/owner": "platform"}},
        }
    )
    assert r.one("ServiceAccount")["metadata"]["annotations"] == {
        "azure.workload.identity/client-id": AZ_CLIENT,
        "azure.workload.identity/tenant-id": AZ_CLIENT,
        "example.com/owner": "platform",
    }


def test_identity_with_an_existing_service_account_is_refused():
    with pytest.raises(helm.HelmRenderError, match="put the identity annotation on your own ServiceAccount"):
        render({"serviceAccount": {"create": False, "name": "mine"}, "identity": {"aws": {"roleArn": ROLE_ARN}}})
    r = render({"serviceAccount": {"create": False, "name": "mine"}})
    assert not r.of_kind("ServiceAccount")
    assert pod_spec(r)["serviceAccountName"] == "mine"


# --- RBAC -----------------------------------------------------------------------

WATCH_RULES = [
    {"apiGroups": ["portcullis.dev"], "resources": ["llmproviders", "llmproxies", "llmbudgets"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["portcullis.dev"], "resources": ["llmproviders/status", "llmproxies/status", "llmbudgets/status"],
     "verbs": ["get", "patch", "update"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]
LEASE_RULES = [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}]
TOKENREVIEW_RULES = [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]


def bound_to_gateway_sa(binding: dict) -> bool:
    return binding["subjects"] == [{"kind": "ServiceAccount", "name": "portcullis", "namespace": NAMESPACE}]


def test_rbac_cluster_wide_by_default(default_render):
    r = default_render
    assert r.one("ClusterRole", "portcullis")["rules"] == WATCH_RULES
    assert r.one("ClusterRole", "portcullis-tokenreview")["rules"] == TOKENREVIEW_RULES
    lease = r.one("Role", "portcullis-leader-election")
    assert lease["metadata"]["namespace"] == NAMESPACE
    assert lease["rules"] == LEASE_RULES
    for kind, name in [
        ("ClusterRoleBinding", "portcullis"),
        ("ClusterRoleBinding", "portcullis-tokenreview"),
        ("RoleBinding", "portcullis-leader-election"),
    ]:
        b = r.one(kind, name)
        assert bound_to_gateway_sa(b), b
        assert b["roleRef"]["name"] == name


def test_rbac_per_watched_namespace():
    r = render({"watchNamespaces": ["team-a", "team-b"]})
    assert [c["metadata"]["name"] for c in r.of_kind("ClusterRole")] == ["portcullis-tokenreview"]
    assert [c["metadata"]["name"] for c in r.of_kind("ClusterRoleBinding")] == ["portcullis-tokenreview"]
    for ns in ["team-a", "team-b"]:
        (role,) = [x for x in r.of_kind("Role") if x["metadata"]["namespace"] == ns]
        assert role["rules"] == WATCH_RULES
        (binding,) = [x for x in r.of_kind("RoleBinding") if x["metadata"]["namespace"] == ns]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
        assert bound_to_gateway_sa(binding)
    assert r.one("Role", "portcullis-leader-election")["rules"] == LEASE_RULES
    args = container(r)["args"]
    assert args[-4:] == ["--namespace", "team-a", "--namespace", "team-b"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rbac_is_narrow(name):
    allowed = {
        ("portcullis.dev", "llmproviders"): {"get", "list", "watch"},
        ("portcullis.dev", "llmproxies"): {"get", "list", "watch"},
        ("portcullis.dev", "llmproviders/status"): {"get", "patch", "update"},
        ("portcullis.dev", "llmproxies/status"): {"get", "patch", "update"},
        ("portcullis.dev", "llmbudgets"): {"get", "list", "watch"},
        ("portcullis.dev", "llmbudgets/status"): {"get", "patch", "update"},
        ("", "secrets"): {"get", "list", "watch"},
        ("", "events"): {"create", "patch"},
        ("events.k8s.io", "events"): {"create", "patch"},
        ("coordination.k8s.io", "leases"): {"get", "create", "update"},
        ("authentication.k8s.io", "tokenreviews"): {"create"},
    }
    r = render(VALUE_SETS[name])
    for role in r.of_kind("ClusterRole") + r.of_kind("Role"):
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule
            for group in rule["apiGroups"]:
                for res in rule["resources"]:
                    assert (group, res) in allowed, f"{role['metadata']['name']} grants {group}/{res}"
                    assert set(rule["verbs"]) <= allowed[(group, res)], rule
    leases = [ro for ro in r.of_kind("ClusterRole") if any("leases" in ru["resources"] for ru in ro["rules"])]
    assert not leases, "Leases are granted in the release namespace only"


def test_rbac_can_be_turned_off():
    r = render({"rbac": {"create": False}})
    assert not [o for o in r.manifests if o["apiVersion"].startswith("rbac.authorization.k8s.io/")]


# --- optional objects -----------------------------------------------------------

OPTIONAL = {
    "PodDisruptionBudget": {"podDisruptionBudget": {"enabled": True}},
    "HorizontalPodAutoscaler": {"autoscaling": {"enabled": True}},
    "ServiceMonitor": {"serviceMonitor": {"enabled": True}},
    "NetworkPolicy": {"networkPolicy": {"enabled": True}},
    "Ingress": {"ingress": {"enabled": True}},
    "BackendConfig": {"gke": {"backendConfig": {"enabled": True}}},
}


@pytest.mark.parametrize("kind", sorted(OPTIONAL))
def test_optional_objects_only_when_enabled(kind, default_render):
    assert not default_render.of_kind(kind), f"{kind} must be off by default"
    r = render(OPTIONAL[kind])
    obj = r.one(kind)
    assert obj["metadata"]["name"] == "portcullis"
    others = set(OPTIONAL) - {kind}
    assert not [o for o in r.manifests if o["kind"] in others]


def test_pdb_and_hpa_target_the_deployment():
    r = render({"podDisruptionBudget": {"enabled": True}, "autoscaling": {"enabled": True, "minReplicas": 3}})
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == r.one("Deployment")["spec"]["selector"]["matchLabels"]
    hpa = r.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "portcullis"}
    assert hpa["spec"]["minReplicas"] == 3
    assert "replicas" not in r.one("Deployment")["spec"], "the HPA owns the replica count"
    r = render({"podDisruptionBudget": {"enabled": True, "maxUnavailable": 1}})
    assert r.one("PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": r.one("PodDisruptionBudget")["spec"]["selector"],
    }


def test_service_monitor_scrapes_admin_metrics():
    sm = render({"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}).one("ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"] == [
        {"port": "admin", "path": "/metrics", "scheme": "http", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_network_policy_admits_only_labelled_namespaces_to_data_plane():
    r = render({"networkPolicy": {"enabled": True}})
    assert "kubectl label namespace <client-namespace> portcullis.dev/access=true" in r.notes
    np = r.one("NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress"]
    data, admin = np["spec"]["ingress"]
    assert data["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert data["from"] == [{"namespaceSelector": {"matchLabels": {"portcullis.dev/access": "true"}}}]
    assert admin["ports"] == [{"port": "admin", "protocol": "TCP"}]
    assert admin["from"] == [{"podSelector": {}}]
    np = render(
        {"networkPolicy": {"enabled": True, "clientNamespaceLabels": {"team": "ml"}, "adminPeers": []}}
    ).one("NetworkPolicy")
    assert np["spec"]["ingress"] == [
        {"ports": [{"port": "http", "protocol": "TCP"}], "from": [{"namespaceSelector": {"matchLabels": {"team": "ml"}}}]}
    ]


def test_ingress_class_annotations_and_backend():
    ing = render(EVERYTHING_ON).one("Ingress")
    assert ing["spec"]["ingressClassName"] == "alb"
    assert ing["metadata"]["annotations"] == {
        "alb.ingress.kubernetes.io/load-balancer-attributes": "idle_timeout.timeout_seconds=3600"
    }
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == "portcullis.example.com"
    (path,) = rule["http"]["paths"]
    assert path["backend"] == {"service": {"name": "portcullis", "port": {"number": 8080}}}
    assert ing["spec"]["tls"] == [{"secretName": "portcullis-tls", "hosts": ["portcullis.example.com"]}]


def test_gke_backend_config_raises_timeout_and_is_attached():
    r = render({"gke": {"backendConfig": {"enabled": True, "timeoutSec": 7200}}})
    bc = r.one("BackendConfig")
    assert bc["apiVersion"] == "cloud.google.com/v1"
    assert bc["spec"]["timeoutSec"] == 7200
    assert bc["spec"]["healthCheck"]["requestPath"] == "/readyz"
    assert bc["spec"]["healthCheck"]["port"] == 9090
    ann = r.one("Service")["metadata"]["annotations"]["cloud.google.com/backend-config"]
    assert json.loads(ann) == {"default": "portcullis"}


def test_values_document_cloud_lb_idle_timeouts():
    text = (chartlib.CHART / "values.yaml").read_text()
    for needle in [
        "alb.ingress.kubernetes.io/load-balancer-attributes: idle_timeout.timeout_seconds=",  # AWS ALB
        "service.beta.kubernetes.io/aws-load-balancer-listener-attributes.TCP-8080: tcp.idle_timeout.seconds=",  # AWS NLB
        "timeoutSec",  # GKE BackendConfig
        "appgw.ingress.kubernetes.io/request-timeout",  # Azure Application Gateway
        "service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout",  # Azure LB
    ]:
        assert needle in text, needle


# --- values.schema.json ------------------------------------------------------------


@pytest.mark.parametrize(
    "values, where",
    [
        ({"replicaCount": "many"}, "/replicaCount"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"identity": {"aws": {"roleArn": "my-role"}}}, "/identity/aws/roleArn"),
        ({"identity": {"gcp": {"serviceAccount": "not-an-email"}}}, "/identity/gcp/serviceAccount"),
        ({"identity": {"azure": {"clientId": "xyz"}}}, "/identity/azure/clientId"),
        ({"identity": {"aws": {"rolearn": ROLE_ARN}}}, "rolearn"),
        ({"replicas": 3}, "replicas"),
        ({"service": {"type": "Ingress"}}, "/service/type"),
        ({"watchNamespaces": "team-a"}, "/watchNamespaces"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
        ({"shutdownGraceSeconds": "30s"}, "/shutdownGraceSeconds"),
        ({"sseKeepAlive": 10}, "/sseKeepAlive"),
        ({"preStopSleepSeconds": -1}, "/preStopSleepSeconds"),
        ({"preStopSleepSeconds": "5s"}, "/preStopSleepSeconds"),
        ({"sseKeepAlive": "10"}, "/sseKeepAlive"),
        ({"sseKeepAlive": "ten seconds"}, "/sseKeepAlive"),
        ({"serviceMonitor": {"interval": "30"}}, "/serviceMonitor/interval"),
        ({"networkPolicy": {"clientNamespaceLabels": {"team": 1}}}, "/networkPolicy/clientNamespaceLabels/team"),
    ],
)
def test_schema_refuses_bad_values(values, where):
    with pytest.raises(helm.HelmValuesError) as err:
        render(values)
    message = str(err.value)
    assert "schema" in message and where in message, message


def test_replica_count_many_message_is_clear():
    with pytest.raises(helm.HelmValuesError) as err:
        render({"replicaCount": "many"})
    assert re.search(r"at '/replicaCount': got string, want integer", str(err.value)), str(err.value)


def test_defaults_satisfy_schema():
    with chartlib.load_chart() as chart:
        chart.validate_schema({})
        chart.validate_schema(EVERYTHING_ON)


# --- NOTES.txt and helm test ------------------------------------------------------------


def test_notes_tell_how_to_reach_the_service(default_render):
    notes = default_render.notes
    assert "http://portcullis.portcullis.svc:8080/v1/model-router/<ns>.<proxy>" in notes
    assert "kubectl -n portcullis rollout status deployment/portcullis" in notes
    assert "helm test portcullis -n portcullis" in notes
    assert "kubectl get llmproviders,llmproxies" in notes


def test_notes_follow_release_name_and_namespace():
    r = render(name="gw", namespace="llm")
    assert "http://gw-portcullis.llm.svc:8080/v1/model-router/<ns>.<proxy>" in r.notes
    assert r.one("Service")["metadata"]["name"] == "gw-portcullis"


def test_helm_test_hook_checks_readyz(default_render):
    (pod,) = default_render.hooks
    assert pod["kind"] == "Pod"
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (c,) = pod["spec"]["containers"]
    assert c["command"][-1] == "http://portcullis.portcullis.svc:9090/readyz"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


# --- offline Kubernetes schema validation and lint -------------------------------------------


@pytest.mark.parametrize("version", chartlib.K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_objects_validate_against_kubernetes(name, version):
    r = render(VALUE_SETS[name])
    assert r.objects
    for obj in r.objects:
        chartlib.validate_k8s(obj, version)


def test_everything_on_renders_every_template():
    r = render(EVERYTHING_ON)
    used = {path for path, text in r.sources.items() if text.strip()}
    templates = {
        f"portcullis/{p.relative_to(chartlib.CHART).as_posix()}"
        for p in (chartlib.CHART / "templates").rglob("*.yaml")
    }
    assert templates <= used, templates - used


@pytest.mark.parametrize("values", [{}, EVERYTHING_ON], ids=["default", "everything-on"])
def test_helm_lint_strict(values):
    report = chartlib.helm_lint(values, kube_version="v1.33.0")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == [], report
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], report


def test_identity_trust_and_connection_limits_are_passed_to_the_gateway(default_render):
    args = container(default_render)["args"]
    assert "--trusted-identity-hosts" not in args and "--allowed-azure-scopes" not in args
    assert args[args.index("--header-read-timeout") + 1] == "30s"
    assert args[args.index("--max-header-bytes") + 1] == "65536"
    assert args[args.index("--max-headers") + 1] == "100"
    r = render({"trustedIdentityHosts": ["vertex.corp.example:8443", "*.privatelink.example"],
                "allowedAzureScopes": ["api://custom/.default"],
                "connections": {"headerReadTimeout": "10s", "maxHeaderBytes": 32768, "maxHeaders": 50}})
    args = container(r)["args"]
    assert args[args.index("--trusted-identity-hosts") + 1] == "vertex.corp.example:8443,*.privatelink.example"
    assert args[args.index("--allowed-azure-scopes") + 1] == "api://custom/.default"
    assert args[args.index("--header-read-timeout") + 1] == "10s"
    assert args[args.index("--max-headers") + 1] == "50"


@pytest.mark.parametrize("values", [{"trustedIdentityHosts": ["https://x.example"]},
                                    {"trustedIdentityHosts": ["a.example/path"]},
                                    {"connections": {"maxHeaderBytes": 100}}])
def test_bad_identity_and_limit_values_are_refused(values):
    with pytest.raises(Exception):
        render(values)


# --- LlmBudget Redis ------------------------------------------------------------------------


def test_budget_redis_url_becomes_a_secret_in_each_budget_namespace():
    url = "redis://redis.shared.svc:6379/2"
    r = render({"budgets": {"redis": {"url": url, "namespaces": ["team-a", "team-b"]}}})
    secrets = [o for o in r.manifests if o["kind"] == "Secret"]
    assert sorted(s["metadata"]["namespace"] for s in secrets) == ["team-a", "team-b"]
    for s in secrets:
        assert s["metadata"]["name"] == "portcullis-budget-redis"
        assert s["stringData"] == {"url": url}
    # Without a URL, nothing is created (the Secret is then the user's to manage).
    assert not [o for o in render({"budgets": {"redis": {"namespaces": ["team-a"]}}}).manifests
                if o["kind"] == "Secret"]
    with pytest.raises(Exception):
        render({"budgets": {"redis": {"url": "http://not-redis"}}})
