#!/usr/bin/env python3
"""Configuration at scale and under churn (issue 11, item 8). A benchmark, not a test.

Modes (run from the repository root, after `cargo build --release --bin portcullis`):

  bench/scale.py files        10,000 proxies x 5 providers (50,000 routes) in one manifest file:
                              start-up time and RSS, then EDITS one-object edits (one provider's
                              static model list), each timed from the file write to the first
                              /models answer that lists the new model; RSS after each edit; the
                              log lines each reload wrote.
  bench/scale.py kubernetes   the same objects in the fake API server of tests/k8s; edits are
                              API writes, timed the same way. Another replica holds the status
                              Lease, so the numbers are the data plane's (no status writes).
  bench/scale.py churn        a small configuration reloaded RELOADS times through the files
                              (default 10,000), RSS sampled every 1,000 reloads.

Knobs (environment): PORTCULLIS_BIN (default target/release/portcullis), NAMESPACES (100),
PROXIES_PER_NS (100), PROVIDERS_PER_PROXY (5), EDITS (20), RELOADS (10000), KEEP_TMP (0).
Prints one JSON object per mode on the last line, after a human-readable summary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "k8s"))
sys.path.insert(0, str(REPO / "tests" / "sdk"))

from harness import free_port  # noqa: E402

BIN = Path(os.environ.get("PORTCULLIS_BIN") or REPO / "target" / "release" / "portcullis")
NAMESPACES = int(os.environ.get("NAMESPACES", "100"))
PROXIES_PER_NS = int(os.environ.get("PROXIES_PER_NS", "100"))
PROVIDERS = int(os.environ.get("PROVIDERS_PER_PROXY", "5"))
EDITS = int(os.environ.get("EDITS", "20"))
RELOADS = int(os.environ.get("RELOADS", "10000"))
PREFIXES = "abcdefghijklmnopqrstuvwxyz"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def provider_obj(ns: str, name: str, models: list[str]) -> dict:
    return {"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmProvider",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"type": "openai", "baseUrl": "http://127.0.0.1:9/v1",
                     "auth": {"apiKey": {"secretRef": {"name": "key"}}}, "models": {"static": models}}}


def proxy_obj(ns: str, name: str, providers: list[str]) -> dict:
    return {"apiVersion": "portcullis.dev/v1alpha1", "kind": "LlmProxy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"providers": [{"providerRef": {"name": p}, "prefix": PREFIXES[i]}
                                   for i, p in enumerate(providers)]}}


def secret_obj(ns: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "key", "namespace": ns},
            "type": "Opaque", "stringData": {"apiKey": "sk-bench-not-a-real-key"}}


def objects() -> list[dict]:
    out = []
    for n in range(NAMESPACES):
        ns = f"ns{n}"
        out.append(secret_obj(ns))
        for x in range(PROXIES_PER_NS):
            names = [f"px{x}-p{k}" for k in range(PROVIDERS)]
            out += [provider_obj(ns, name, [f"m{k}"]) for k, name in enumerate(names)]
            out.append(proxy_obj(ns, f"px{x}", names))
    return out


def as_yaml(obj: dict) -> str:
    # JSON is YAML: one document per object.
    return json.dumps(obj, separators=(",", ":"))


class Gateway:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.port, self.admin = free_port(), free_port()
        self.log_path = log
        self.log = open(log, "ab")
        full_env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        full_env.update({"RUST_LOG": "info,kube_client=off", **env})
        self.proc = subprocess.Popen([str(BIN), "serve", *args, "--listen", f"127.0.0.1:{self.port}",
                                      "--admin-listen", f"127.0.0.1:{self.admin}"],
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL, env=full_env)

    def wait_ready(self, timeout: float = 600) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"portcullis exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise SystemExit("portcullis never became ready")

    def models(self, proxy: str) -> list[str]:
        url = f"http://127.0.0.1:{self.port}/v1/model-router/{proxy}/models"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return [m["id"] for m in json.loads(r.read())["data"]]
        except (urllib.error.URLError, OSError, ValueError):
            return []

    def wait_model(self, proxy: str, model: str, timeout: float = 30) -> float | None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if model in self.models(proxy):
                return time.monotonic() - t0
            time.sleep(0.005)
        return None

    def log_lines(self) -> int:
        """Lines the configuration side wrote (access and audit lines of the polling excluded)."""
        return sum(1 for line in self.log_path.open("rb")
                   if b"portcullis::access" not in line and not line.startswith(b"{"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def summary(name: str, result: dict) -> None:
    lat = sorted(result.get("edit_seconds", []))
    if lat:
        result["edit_p50_ms"] = round(lat[len(lat) // 2] * 1000, 1)
        result["edit_max_ms"] = round(lat[-1] * 1000, 1)
    print(f"\n== {name}")
    for k, v in result.items():
        if k not in ("edit_seconds", "rss_after_edit_mb", "log_lines_per_edit", "rss_samples_mb"):
            print(f"  {k}: {v}")
    print(json.dumps({"mode": name, **result}))


def edit_loop(gw: Gateway, apply_edit) -> dict:
    """EDITS one-object edits: provider px{i}-p0 of ns{i} gets model `edited-{i}`."""
    seconds, rss, lines = [], [], []
    for i in range(EDITS):
        ns, proxy = f"ns{i % NAMESPACES}", f"px{i % PROXIES_PER_NS}"
        before = gw.log_lines()
        t0 = time.monotonic()
        apply_edit(ns, proxy, f"edited-{i}")
        waited = gw.wait_model(f"{ns}.{proxy}", f"a:edited-{i}")
        if waited is None:
            raise SystemExit(f"edit {i} never served:\n{gw.log_path.read_text()[-3000:]}")
        seconds.append(time.monotonic() - t0)
        time.sleep(0.3)  # let the reload's log lines land
        lines.append(gw.log_lines() - before)
        rss.append(round(rss_mb(gw.proc.pid), 1))
    return {"edit_seconds": [round(s, 4) for s in seconds], "rss_after_edit_mb": rss,
            "rss_min_mb": min(rss), "rss_max_mb": max(rss), "log_lines_per_edit": lines,
            "log_lines_per_edit_max": max(lines)}


def mode_files(tmp: Path) -> dict:
    objs = objects()
    docs = [as_yaml(o) for o in objs]
    index = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): i for i, o in enumerate(objs)}
    cfg = tmp / "config"
    cfg.mkdir()
    main = cfg / "scale.yaml"

    def write() -> None:
        part = cfg / ".scale.yaml.tmp"
        part.write_text("\n---\n".join(docs) + "\n")
        part.replace(main)

    write()
    size = main.stat().st_size
    gw = Gateway(["--config", str(cfg)], {}, tmp / "files.log")
    try:
        started = gw.wait_ready()
        result = {"objects": len(objs), "routes": NAMESPACES * PROXIES_PER_NS * PROVIDERS,
                  "file_mb": round(size / 1e6, 1), "startup_s": round(started, 2),
                  "rss_start_mb": round(rss_mb(gw.proc.pid), 1)}

        def edit(ns: str, proxy: str, model: str) -> None:
            i = index[("LlmProvider", ns, f"{proxy}-p0")]
            docs[i] = as_yaml(provider_obj(ns, f"{proxy}-p0", ["m0", model]))
            write()

        result.update(edit_loop(gw, edit))
        return result
    finally:
        gw.stop()


def mode_kubernetes(tmp: Path) -> dict:
    from fake_apiserver import FakeApiServer

    api = FakeApiServer().start()
    objs = objects()
    for o in objs:
        api.apply(o)
    # Another replica holds the status Lease: this one only serves (no 60,000 status writes).
    api.apply({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "portcullis-status", "namespace": "portcullis-system"},
               "spec": {"holderIdentity": "another-replica", "leaseDurationSeconds": 3600,
                        "acquireTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
                        "renewTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())}})
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(api.kubeconfig("bench", namespace="portcullis-system"))
    gw = Gateway(["--kubernetes"], {"KUBECONFIG": str(kubeconfig), "POD_NAME": "bench"}, tmp / "kube.log")
    try:
        started = gw.wait_ready()
        result = {"objects": len(objs), "routes": NAMESPACES * PROXIES_PER_NS * PROVIDERS,
                  "startup_s": round(started, 2), "rss_start_mb": round(rss_mb(gw.proc.pid), 1)}

        def edit(ns: str, proxy: str, model: str) -> None:
            api.apply(provider_obj(ns, f"{proxy}-p0", ["m0", model]))

        result.update(edit_loop(gw, edit))
        return result
    finally:
        gw.stop()
        api.stop()


def mode_churn(tmp: Path) -> dict:
    cfg = tmp / "config"
    cfg.mkdir()
    main = cfg / "small.yaml"
    base = [secret_obj("ai"), proxy_obj("ai", "team", ["p0", "p1"])]

    def write(i: int) -> None:
        docs = base + [provider_obj("ai", "p0", ["m0", f"r{i}"]), provider_obj("ai", "p1", ["m1"])]
        part = cfg / ".small.tmp"
        part.write_text("\n---\n".join(as_yaml(d) for d in docs) + "\n")
        part.replace(main)

    write(0)
    gw = Gateway(["--config", str(cfg)], {"RUST_LOG": "warn"}, tmp / "churn.log")
    try:
        gw.wait_ready()
        samples = [round(rss_mb(gw.proc.pid), 1)]
        t0 = time.monotonic()
        for i in range(1, RELOADS + 1):
            write(i)
            if gw.wait_model("ai.team", f"a:r{i}", timeout=10) is None:
                raise SystemExit(f"reload {i} never served")
            if i % 1000 == 0:
                samples.append(round(rss_mb(gw.proc.pid), 1))
                print(f"  {i} reloads, RSS {samples[-1]} MB", flush=True)
        return {"reloads": RELOADS, "seconds": round(time.monotonic() - t0, 1), "rss_samples_mb": samples,
                "rss_first_mb": samples[0], "rss_last_mb": samples[-1], "rss_max_mb": max(samples)}
    finally:
        gw.stop()


def main() -> None:
    modes = sys.argv[1:] or ["files", "kubernetes"]
    if not BIN.exists():
        raise SystemExit(f"{BIN} not found: cargo build --release --bin portcullis (or set PORTCULLIS_BIN)")
    tmp = Path(tempfile.mkdtemp(prefix="portcullis-scale-"))
    try:
        for mode in modes:
            run = {"files": mode_files, "kubernetes": mode_kubernetes, "churn": mode_churn}[mode]
            (tmp / mode).mkdir()
            summary(mode, run(tmp / mode))
    finally:
        if os.environ.get("KEEP_TMP") == "1":
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
