"""No silently ignored configuration (issue 11, item 6): an unknown field in a manifest is a
problem that names it, in `portcullis check` and in file mode."""

from __future__ import annotations

import time

from fakes.openai_upstream import FakeOpenAI
from harness import PROVIDER_KEY, docs, provider_doc, run_check, secret_doc, standard_config, write_atomically

# Misspelled failover fields (`spec.models` and `spec.retry` exist).
PROXY_WITH_FAILOVER = ("apiVersion: portcullis.dev/v1alpha1\nkind: LlmProxy\nmetadata: {name: team-a, namespace: ai}\n"
                       "spec:\n  providers: [{providerRef: {name: openai}}]\n"
                       "  modles: [{name: smart, targets: [openai:gpt-test]}]\n  retries: {attempts: 3}\n")


def test_check_names_every_unknown_field(fake: FakeOpenAI, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(docs(secret_doc("openai-key", PROVIDER_KEY),
                      provider_doc("openai", fake.base_url).replace("  auth:", "  timout: 5s\n  auth:"),
                      PROXY_WITH_FAILOVER))
    out = run_check(f)
    assert out.returncode == 1, out.stdout
    for field in ("spec.timout", "spec.modles", "spec.retries"):
        assert f"`{field}`" in out.stderr, out.stderr
    assert "LlmProvider openai" in out.stderr and "LlmProxy team-a" in out.stderr


def test_file_mode_refuses_an_edit_with_an_unknown_field_and_keeps_serving(fake: FakeOpenAI, start_gateway, config_dir):
    gw = start_gateway(standard_config(fake.base_url))
    assert gw.raw("GET", "/v1/model-router/ai.team-a/models").status == 200
    write_atomically(config_dir / "portcullis.yaml",
                     docs(secret_doc("openai-key", PROVIDER_KEY), provider_doc("openai", fake.base_url), PROXY_WITH_FAILOVER))
    deadline = time.monotonic() + 5
    while "spec.retries" not in gw.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = gw.log_text()
    assert "unknown fields" in log and "`spec.modles`" in log and "`spec.retries`" in log, gw.log_tail()
    # The running configuration keeps serving.
    assert gw.raw("GET", "/v1/model-router/ai.team-a/models").status == 200
