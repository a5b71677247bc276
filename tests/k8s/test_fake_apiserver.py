"""The fake API server itself keeps the semantics the controller tests rely on."""

from __future__ import annotations

import http.client
import json

import pytest

from objects import provider, secret


def call(api, method: str, path: str, body=None, token: str = "t", content_type: str = "application/json",
         accept: str = "application/json"):
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    headers = {"Authorization": f"Bearer {token}", "Accept": accept}
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = content_type
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    out = r.status, json.loads(r.read() or b"null")
    conn.close()
    return out


@pytest.fixture
def api(apiserver):
    apiserver.add_token("t")
    return apiserver


PROVIDERS = "/apis/portcullis.dev/v1alpha1/namespaces/ai/llmproviders"


def test_auth_generation_and_resource_versions(api):
    assert call(api, "GET", PROVIDERS, token="nope")[0] == 401
    created = api.apply(provider("openai", "http://127.0.0.1:1/v1"))
    assert created["metadata"]["generation"] == 1
    rv1 = int(created["metadata"]["resourceVersion"])
    # A status write bumps resourceVersion, not generation.
    code, out = call(api, "PATCH", f"{PROVIDERS}/openai/status?fieldManager=m&force=true",
                     {"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmProvider", "status": {"models": 1}},
                     content_type="application/apply-patch+yaml")
    assert code == 200 and out["metadata"]["generation"] == 1 and int(out["metadata"]["resourceVersion"]) > rv1
    # A spec change bumps both; the status survives a spec write.
    changed = api.apply(provider("openai", "http://127.0.0.1:2/v1"))
    assert changed["metadata"]["generation"] == 2 and changed["status"] == {"models": 1}
    code, listed = call(api, "GET", PROVIDERS)
    assert code == 200 and listed["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"]
    # Secrets: stringData folds into base64 data.
    s = api.apply(secret("k", "sk-x"))
    assert "stringData" not in s and s["data"]["apiKey"] == "c2steA=="


def test_server_side_apply_merges_conditions_and_drops_what_a_manager_stopped_applying(api):
    api.apply(provider("openai", "http://127.0.0.1:1/v1"))
    path = f"{PROVIDERS}/openai/status?fieldManager=portcullis&force=true"

    def apply(status):
        code, out = call(api, "PATCH", path, {"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmProvider",
                                              "status": status}, content_type="application/apply-patch+yaml")
        assert code == 200, out
        return out["status"]

    c = {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "ok",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}
    other = dict(c, type="Other")
    call(api, "PATCH", f"{PROVIDERS}/openai/status?fieldManager=someone-else&force=true",
         {"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmProvider", "status": {"conditions": [other]}},
         content_type="application/apply-patch+yaml")
    st = apply({"models": 3, "conditions": [c]})
    assert st["models"] == 3 and {x["type"] for x in st["conditions"]} == {"Accepted", "Other"}
    st = apply({"conditions": [dict(c, status="False")]})
    assert "models" not in st, "a field the manager no longer applies is removed"
    assert [x["status"] for x in st["conditions"] if x["type"] == "Accepted"] == ["False"]
    assert any(x["type"] == "Other" for x in st["conditions"]), "another manager's condition stays"


def test_lease_conflicts_and_watch_410(api):
    leases = "/apis/coordination.k8s.io/v1/namespaces/x/leases"
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
             "spec": {"holderIdentity": "a"}}
    code, created = call(api, "POST", leases, lease)
    assert code == 201
    assert call(api, "POST", leases, lease)[0] == 409
    stale = dict(created, spec={"holderIdentity": "b"})
    assert call(api, "PUT", f"{leases}/l", stale)[0] == 200
    assert call(api, "PUT", f"{leases}/l", stale)[0] == 409, "a stale resourceVersion conflicts"
    # A watch from a compacted resourceVersion gets ERROR 410 Gone.
    api.compact()
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    conn.request("GET", f"{PROVIDERS}?watch=true&resourceVersion=1", headers={"Authorization": "Bearer t"})
    r = conn.getresponse()
    event = json.loads(r.read().split(b"\n")[0])
    conn.close()
    assert event["type"] == "ERROR" and event["object"]["code"] == 410
