"""Watch restarts (dropped connections, 410 Gone, an unavailable API server), startup
without CRDs, namespace scoping and the in-pod default."""

from __future__ import annotations

import subprocess
import time

import openai

from harness import ALT_PROVIDER_KEY, PROVIDER_KEY
from objects import NS, provider, proxy, secret, wait_until

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(gw, proxy_id: str) -> str:
    client = gw.router_client(proxy=proxy_id, timeout=3)
    return client.chat.completions.create(model="openai:gpt-test", messages=MESSAGES).choices[0].message.content


def is_404(gw, proxy_id: str) -> bool:
    try:
        chat(gw, proxy_id)
    except openai.NotFoundError:
        return True
    return False


def models(gw, proxy_id: str) -> list[str]:
    return [m.id for m in gw.router_client(proxy=proxy_id, timeout=3).models.list()]


def lists(apiserver, plural: str) -> int:
    """Full (non-watch) list requests the gateway made for a resource."""
    return sum(1 for m, path, q in apiserver.requests
               if m == "GET" and path.endswith(f"/{plural}") and "watch=true" not in q)


def setup(apiserver, fake, gw) -> None:
    apiserver.apply(secret("openai-key", PROVIDER_KEY))
    apiserver.apply(provider("openai", fake.base_url))
    apiserver.apply(proxy("team-a"))
    assert wait_until(lambda: chat(gw, "ai.team-a") == "echo: hi", 5), gw.log_tail()


def last_key(fake) -> str:
    return fake.requests_to("/v1/chat/completions")[-1].header("authorization")


def test_dropped_watch_resumes_from_its_resource_version(apiserver, fake, start_kube_gateway):
    gw = start_kube_gateway()
    setup(apiserver, fake, gw)
    assert wait_until(lambda: apiserver.open_watches("llmproxies") == 1, 5)
    listed = lists(apiserver, "llmproxies")

    apiserver.kill_watches("disconnect")
    # Changes made while the watch is down arrive once it is back.
    apiserver.apply(proxy("team-b"))
    apiserver.delete("LlmProxy", NS, "team-a")
    assert wait_until(lambda: chat(gw, "ai.team-b") == "echo: hi" and is_404(gw, "ai.team-a"), 5), gw.log_tail()
    assert wait_until(lambda: apiserver.open_watches("llmproxies") == 1, 5)
    # Resumed with a watch from the last resourceVersion: no re-list was needed.
    assert lists(apiserver, "llmproxies") == listed
    watches = [q for m, path, q in apiserver.requests if path.endswith("/llmproxies") and "watch=true" in q]
    assert len(watches) >= 2 and all("allowWatchBookmarks=true" in q and "resourceVersion=" in q for q in watches)
    assert models(gw, "ai.team-b") == ["openai:gpt-test", "openai:gpt-test-mini"]


def test_410_gone_relists_without_losing_or_duplicating(apiserver, fake, start_kube_gateway):
    gw = start_kube_gateway()
    setup(apiserver, fake, gw)
    apiserver.apply(proxy("team-b"))
    assert wait_until(lambda: chat(gw, "ai.team-b") == "echo: hi", 5)
    listed = lists(apiserver, "llmproxies")

    apiserver.kill_watches("gone")
    apiserver.delete("LlmProxy", NS, "team-b")
    apiserver.apply(proxy("team-c"))
    assert wait_until(lambda: chat(gw, "ai.team-c") == "echo: hi" and is_404(gw, "ai.team-b"), 5), gw.log_tail()
    assert lists(apiserver, "llmproxies") > listed, "a 410 must re-list"
    assert chat(gw, "ai.team-a") == "echo: hi"
    assert models(gw, "ai.team-a") == ["openai:gpt-test", "openai:gpt-test-mini"]


def test_unavailable_api_server_keeps_serving_then_catches_up(apiserver, fake, start_kube_gateway):
    gw = start_kube_gateway()
    setup(apiserver, fake, gw)
    apiserver.apply(proxy("team-b"))
    assert wait_until(lambda: chat(gw, "ai.team-b") == "echo: hi", 5)

    apiserver.set_unavailable(True)
    time.sleep(1.5)
    # The last snapshot keeps serving, and the gateway stays ready.
    assert gw.ready(), "readyz must stay ready while the API server is unreachable"
    assert chat(gw, "ai.team-a") == "echo: hi"
    assert chat(gw, "ai.team-b") == "echo: hi"
    # Meanwhile: team-b deleted, team-c created, the key rotated; history compacted, so
    # only a re-list can tell the gateway that team-b is gone.
    apiserver.delete("LlmProxy", NS, "team-b")
    apiserver.apply(proxy("team-c"))
    apiserver.apply(secret("openai-key", ALT_PROVIDER_KEY))
    apiserver.compact()
    time.sleep(1.0)
    assert gw.ready()
    assert chat(gw, "ai.team-b") == "echo: hi", "nothing changes while the API server is away"

    apiserver.set_unavailable(False)
    assert wait_until(lambda: chat(gw, "ai.team-c") == "echo: hi" and is_404(gw, "ai.team-b"), 15), gw.log_tail()
    assert wait_until(lambda: chat(gw, "ai.team-a") == "echo: hi" and last_key(fake) == f"Bearer {ALT_PROVIDER_KEY}", 5)
    assert models(gw, "ai.team-c") == ["openai:gpt-test", "openai:gpt-test-mini"]
    assert gw.proc.poll() is None


def test_missing_crds_fail_startup_with_the_install_hint(apiserver, start_kube_gateway):
    apiserver.crds_installed = False
    gw = start_kube_gateway(wait_ready=False)
    proc = gw.spawn()
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"portcullis kept running without CRDs:\n{gw.log_tail()}")
    assert code != 0
    log = gw.log_text()
    assert "CustomResourceDefinitions are not installed" in log, log
    assert "portcullis crds | kubectl apply -f -" in log, log


def test_missing_rbac_fails_startup_naming_the_rights(apiserver, start_kube_gateway):
    apiserver.forbidden = {"secrets"}
    gw = start_kube_gateway(wait_ready=False)
    proc = gw.spawn()
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"portcullis kept running without RBAC on Secrets:\n{gw.log_tail()}")
    assert code != 0
    assert "grant this service account get, list and watch on secrets" in gw.log_text(), gw.log_text()


def test_namespace_flag_limits_what_is_watched(apiserver, fake, start_kube_gateway):
    apiserver.apply(secret("openai-key", PROVIDER_KEY, ns="other"))
    apiserver.apply(provider("openai", fake.base_url, ns="other"))
    apiserver.apply(proxy("team-x", ns="other"))
    gw = start_kube_gateway(extra_args=["--namespace", NS])
    setup(apiserver, fake, gw)
    assert is_404(gw, "other.team-x")
    # Nothing outside the namespace was listed or watched, Secrets included.
    paths = {path for _, path, _ in apiserver.requests}
    assert "/api/v1/secrets" not in paths
    assert "/api/v1/namespaces/ai/secrets" in paths
    assert not [p for p in paths if "/namespaces/other/" in p], paths
    assert "/apis/portcullis.dev/v1alpha1/llmproxies" not in paths


def test_kubernetes_is_the_default_in_a_pod(apiserver, fake, start_kube_gateway):
    gw = start_kube_gateway(flag=False, env={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "1"})
    setup(apiserver, fake, gw)


def test_unreachable_api_server_connection_refused(apiserver, fake, start_kube_gateway):
    gw = start_kube_gateway()
    setup(apiserver, fake, gw)
    apiserver.go_away()
    time.sleep(2.0)
    assert gw.ready(), "readyz must stay ready while the API server is unreachable"
    assert chat(gw, "ai.team-a") == "echo: hi"
    apiserver.apply(proxy("team-b"))
    apiserver.come_back()
    assert wait_until(lambda: chat(gw, "ai.team-b") == "echo: hi", 15), gw.log_tail()
    assert chat(gw, "ai.team-a") == "echo: hi"
