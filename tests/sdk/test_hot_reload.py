"""File-mode hot reload under load, broken edits, and `portcullis check`."""

from __future__ import annotations

import threading
import time

import openai

from harness import (PROVIDER_KEY, assert_no_secret, docs, provider_doc, proxy_doc, run_check,
                     secret_doc, standard_config, write_atomically)

MESSAGES = [{"role": "user", "content": "load"}]
RELOAD_DEADLINE = 1.0  # contract: a valid change applies within 1 second


class Load(threading.Thread):
    """Loops router requests (bounded in count and time) and records every failure."""

    def __init__(self, gw, stream: bool, proxy: str = "ai.team-a", max_requests: int = 3000,
                 max_seconds: float = 60.0) -> None:
        super().__init__(daemon=True)
        self.client = gw.router_client(proxy=proxy, timeout=10)
        self.stream = stream
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.stop_event = threading.Event()
        self.ok = 0
        self.failures: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        n = 0
        while not self.stop_event.is_set() and n < self.max_requests and time.monotonic() < deadline:
            n += 1
            try:
                if self.stream:
                    text = "".join(c.choices[0].delta.content or "" for c in self.client.chat.completions.create(
                        model="openai:gpt-test", messages=MESSAGES, stream=True) if c.choices)
                else:
                    text = self.client.chat.completions.create(
                        model="openai:gpt-test", messages=MESSAGES).choices[0].message.content
                if text != "echo: load":
                    self.failures.append(f"wrong content {text!r}")
                else:
                    self.ok += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failures.append(f"{type(e).__name__}: {e}")

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=20)


def wait_until(pred, timeout: float = 5.0, interval: float = 0.05):
    """Seconds from now until `pred()` first held (time of the successful attempt's start), or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        started = time.monotonic()
        try:
            if pred():
                return started - t0
        except Exception:  # noqa: BLE001
            pass
        time.sleep(interval)
    return None


def model_ids(gw, proxy: str) -> list[str]:
    return sorted(m.id for m in gw.router_client(proxy=proxy, timeout=5).models.list())


def config(fake, static, proxies=("team-a",), extra: str = "") -> str:
    parts = [secret_doc("openai-key", PROVIDER_KEY), provider_doc("openai", fake.base_url, static=static)]
    parts += [proxy_doc(p, ["openai"]) for p in proxies]
    if extra:
        parts.append(extra)
    return docs(*parts)


def test_hot_reload_under_load(fake, start_gateway, config_dir):
    main = config_dir / "portcullis.yaml"
    gw = start_gateway(config(fake, ["gpt-test"]))
    assert model_ids(gw, "ai.team-a") == ["openai:gpt-test"]

    fake.stream_pieces = ["echo", ": ", "lo", "ad"]
    fake.chunk_delay = 0.15  # each stream lasts ~0.75 s, so streams are in flight across every reload
    loads = [Load(gw, stream=False), Load(gw, stream=True)]
    for t in loads:
        t.start()
    try:
        assert wait_until(lambda: all(t.ok > 0 for t in loads), timeout=5.0) is not None, \
            [t.failures[:3] for t in loads]

        # 1. A valid edit: a second proxy and a longer static list.
        write_atomically(main, config(fake, ["gpt-test", "gpt-new"], proxies=("team-a", "team-b")))
        elapsed = wait_until(lambda: "openai:gpt-new" in model_ids(gw, "ai.team-b")
                             and "openai:gpt-new" in model_ids(gw, "ai.team-a"))
        assert elapsed is not None, f"the edit never applied.\n{gw.log_tail()}"
        assert elapsed < RELOAD_DEADLINE, f"the edit applied after {elapsed:.2f}s (> {RELOAD_DEADLINE}s)"
        resp = gw.router_client(proxy="ai.team-b").chat.completions.create(model="openai:gpt-new",
                                                                            messages=MESSAGES)
        assert resp.model == "openai:gpt-new"
        time.sleep(0.3)

        # 2. Invalid YAML: refused, the last good configuration keeps serving.
        write_atomically(main, "apiVersion: portcullis.dev/v1alpha1\nkind: LlmProxy\nspec: [unclosed\n")
        time.sleep(1.5)
        assert model_ids(gw, "ai.team-a") == ["openai:gpt-new", "openai:gpt-test"]
        assert model_ids(gw, "ai.team-b") == ["openai:gpt-new", "openai:gpt-test"]
        chk = run_check(config_dir)
        assert chk.returncode != 0, f"check accepted invalid YAML:\n{chk.stdout}\n{chk.stderr}"
        assert "portcullis.yaml" in chk.stdout + chk.stderr, "check must name the broken file"

        # 3. Recovery: a fixed main file plus a new file in the folder.
        write_atomically(config_dir / "team-c.yaml", proxy_doc("team-c", ["openai"]))
        write_atomically(main, config(fake, ["gpt-test", "gpt-new", "gpt-recovered"],
                                      proxies=("team-a", "team-b")))
        elapsed = wait_until(lambda: "openai:gpt-recovered" in model_ids(gw, "ai.team-c"))
        assert elapsed is not None and elapsed < RELOAD_DEADLINE, f"recovery took {elapsed}s\n{gw.log_tail()}"
        assert run_check(config_dir).returncode == 0
        time.sleep(0.5)
    finally:
        for t in loads:
            t.finish()

    for t in loads:
        assert t.failures == [], f"{len(t.failures)} failed requests during reloads, first: {t.failures[:5]}"
        assert t.ok >= 3
    # The in-flight streams completed with [DONE] (none was cut by a swap).
    assert fake.stream_completed >= loads[1].ok


def test_broken_objects_keep_their_last_good_version_and_others_move_on(fake, start_gateway, config_dir):
    """Contract section 5a, in file mode: the unit of configuration is the object. One edit
    breaks the provider `openai` (its Secret disappears) and adds a proxy naming a provider
    that does not exist, while it also changes team-a. `openai` keeps serving its last good
    version (no request fails), team-a's change and the new proxy take effect, and the entry
    with no good version answers 503 provider_not_ready naming the problem. (Before, the
    whole edit was refused.)"""
    main = config_dir / "portcullis.yaml"
    gw = start_gateway(docs(secret_doc("openai-key", PROVIDER_KEY),
                            provider_doc("openai", fake.base_url, static=["gpt-test"]),
                            proxy_doc("team-a", ["openai"]), proxy_doc("team-b", ["openai"])))
    load = Load(gw, stream=False, proxy="ai.team-b")
    load.start()
    try:
        assert wait_until(lambda: load.ok > 0, timeout=5.0) is not None, load.failures[:3]
        broken = docs(provider_doc("openai", fake.base_url, static=["gpt-broken-only"]),
                      proxy_doc("team-a", ["openai", ("openai", "alias")]), proxy_doc("team-b", ["openai"]),
                      proxy_doc("team-c", ["nosuch-provider"]))
        t0 = time.monotonic()
        write_atomically(main, broken)
        elapsed = wait_until(lambda: "alias:gpt-test" in model_ids(gw, "ai.team-a"), timeout=3.0)
        assert elapsed is not None, f"team-a's change never applied.\n{gw.log_tail()}"
        assert time.monotonic() - t0 < 1.0 + 0.5, "team-a's change took longer than a second"
        reported = wait_until(lambda: "nosuch-provider" in gw.log_text() and "openai-key" in gw.log_text(), 3.0)
        assert reported is not None, f"the broken objects were not reported in the log.\n{gw.log_tail()}"
        time.sleep(1.0)

        chk = run_check(config_dir)
        out = chk.stdout + chk.stderr
        assert chk.returncode != 0, f"check accepted a broken config:\n{out}"
        assert "nosuch-provider" in out and "openai-key" in out, out
        assert_no_secret(out, "check output")

        # The broken provider serves its last good version (the old static list and key).
        assert model_ids(gw, "ai.team-b") == ["openai:gpt-test"], "openai stopped serving its last good version"
        assert sorted(model_ids(gw, "ai.team-a")) == ["alias:gpt-test", "openai:gpt-test"]
        # The entry whose provider never existed: 503 provider_not_ready, naming it.
        client = gw.router_client(proxy="ai.team-c", timeout=5)
        try:
            client.chat.completions.create(model="nosuch-provider:gpt-test", messages=MESSAGES)
            raise AssertionError("a provider entry with no good version answered")
        except openai.APIStatusError as e:
            assert e.status_code == 503, e
            assert e.body["code"] == "provider_not_ready", e.body
            assert "ai/nosuch-provider not found" in e.body["message"], e.body
        r = gw.raw("POST", "/v1/nosuch-provider/ai.team-c/chat/completions",
                   {"model": "gpt-test", "messages": MESSAGES})
        assert r.status == 503 and r.json()["error"]["code"] == "provider_not_ready", r.text
        assert_no_secret(r.text, "provider_not_ready answer")

    finally:
        load.finish()
    assert load.failures == [], f"{len(load.failures)} requests to team-b failed while openai was broken, " \
                                f"first: {load.failures[:3]}"
    assert load.ok >= 3

    # Fixed: the newest version of openai serves.
    write_atomically(main, docs(secret_doc("openai-key", PROVIDER_KEY), broken))
    assert wait_until(lambda: model_ids(gw, "ai.team-b") == ["openai:gpt-broken-only"], 1.5) is not None, \
        gw.log_tail()


def test_check_valid_config_prints_routes(fake, config_dir):
    (config_dir / "portcullis.yaml").write_text(standard_config(fake.base_url))
    chk = run_check(config_dir)
    out = chk.stdout + chk.stderr
    assert chk.returncode == 0, out
    assert "team-a" in out and "openai" in out, f"check should print the routing table:\n{out}"
    assert_no_secret(out, "check output")


def test_check_reports_every_problem(fake, config_dir):
    (config_dir / "a.yaml").write_text(docs(
        secret_doc("openai-key", PROVIDER_KEY),
        provider_doc("openai", fake.base_url),
        provider_doc("lost", fake.base_url, secret="ghost-secret"),
        proxy_doc("team-a", ["openai", ("lost", "lost")]),
        proxy_doc("team-x", ["ghost-provider"]),
    ))
    chk = run_check(config_dir)
    out = chk.stdout + chk.stderr
    assert chk.returncode != 0, out
    assert "ghost-secret" in out, f"missing secret not reported:\n{out}"
    assert "ghost-provider" in out, f"missing provider not reported:\n{out}"
    assert_no_secret(out, "check output")


def test_check_single_file_names_bad_base_url(fake, config_dir):
    """`check` on a single file path works as on a folder."""
    f = config_dir / "p.yaml"
    f.write_text(docs(secret_doc("openai-key", PROVIDER_KEY),
                      provider_doc("openai", "not a url"),
                      proxy_doc("team-a", ["openai"])))
    chk = run_check(f)
    assert chk.returncode != 0
    assert "baseUrl" in chk.stdout + chk.stderr, chk.stdout + chk.stderr
