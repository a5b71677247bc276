"""The Dockerfile (no container engine here: its structure is checked, and the
command it runs is checked against the real binary)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

import chartlib

DOCKERFILE = chartlib.REPO / "Dockerfile"
DOCKERIGNORE = chartlib.REPO / ".dockerignore"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages() -> list[dict]:
    """Each FROM starts a stage: {'image', 'name', 'steps': [(instr, args)]}."""
    result: list[dict] = []
    for instr, args in instructions():
        if instr == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", args, re.IGNORECASE)
            assert m, args
            result.append({"image": m.group(1), "name": m.group(2), "steps": []})
        elif result:
            result[-1]["steps"].append((instr, args))
    return result


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def final_stage() -> dict:
    return stages()[-1]


def entrypoint_and_cmd() -> tuple[list[str], list[str]]:
    steps = dict(final_stage()["steps"])
    return exec_form(steps["ENTRYPOINT"]), exec_form(steps["CMD"])


def cargo_binary_name() -> str:
    manifest = tomllib.loads((chartlib.REPO / "Cargo.toml").read_text())
    bins = manifest.get("bin", [])
    if bins:
        names = [b["name"] for b in bins]
        assert "portcullis" in names, names
        return "portcullis"
    return manifest["package"]["name"]


def test_multi_stage_with_distroless_nonroot_runtime():
    s = stages()
    assert len(s) >= 2, "multi-stage build"
    build, final = s[0], s[-1]
    assert build["image"].split("/")[-1].startswith("rust:"), build["image"]
    assert final["image"].startswith("gcr.io/distroless/"), final["image"]
    assert final["image"].endswith(":nonroot"), "the runtime image runs as non-root"
    steps = final["steps"]
    assert not [a for i, a in steps if i == "RUN"], "the runtime stage has no shell: no RUN"
    (user,) = [a for i, a in steps if i == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root UID, so runAsNonRoot can verify it"
    (expose,) = [a for i, a in steps if i == "EXPOSE"]
    assert set(expose.split()) == {"8080", "9090"}
    labels = " ".join(a for i, a in steps if i == "LABEL")
    for key in ["title", "description", "licenses", "version", "revision"]:
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_dependency_layer_is_cached_separately_from_source():
    build = stages()[0]["steps"]
    copies = [(n, a) for n, (i, a) in enumerate(build) if i == "COPY"]
    runs = [(n, a) for n, (i, a) in enumerate(build) if i == "RUN"]
    (manifest_copy,) = [n for n, a in copies if "Cargo.toml" in a and "Cargo.lock" in a]
    (src_copy,) = [n for n, a in copies if re.match(r"src\s", a)]
    dep_builds = [n for n, a in runs if manifest_copy < n < src_copy and "cargo build --release" in a]
    assert dep_builds, "a `cargo build --release` of the dependencies before `COPY src`"
    assert any(n > src_copy and "cargo build --release" in a for n, a in runs)
    for n, a in runs:
        if "cargo build" in a:
            assert "--locked" in a, "builds use Cargo.lock as is"


def test_copies_the_binary_cargo_build_release_produces():
    s = stages()
    build = s[0]
    workdir = [a for i, a in build["steps"] if i == "WORKDIR"][-1]
    name = cargo_binary_name()
    (copy,) = [a for i, a in s[-1]["steps"] if i == "COPY"]
    parts = copy.split()
    assert parts[0] == f"--from={build['name']}", copy
    src, dest = parts[1], parts[2]
    assert src == f"{workdir.rstrip('/')}/target/release/{name}", (
        f"COPY takes {src}, but `cargo build --release` in {workdir} writes target/release/{name}"
    )
    entrypoint, _ = entrypoint_and_cmd()
    assert entrypoint == [dest] == ["/usr/local/bin/portcullis"]


def test_cargo_targets_outside_src_are_copied_into_the_build():
    """Every target Cargo.toml names outside src/ (bench, test, example, build
    script) must be copied by the build stage before the dependency build and
    let through .dockerignore, or `cargo build` fails inside the image."""
    manifest = tomllib.loads((chartlib.REPO / "Cargo.toml").read_text())
    paths = [t.get("path") for key in ("bin", "bench", "test", "example") for t in manifest.get(key, [])]
    build = manifest["package"].get("build")
    if isinstance(build, str):
        paths.append(build)
    outside = [p for p in paths if p and not p.startswith("src/")]
    steps = stages()[0]["steps"]
    first_build = next(i for i, (instr, args) in enumerate(steps) if instr == "RUN" and "cargo build" in args)
    copied = [args.split()[0].rstrip("/") for instr, args in steps[:first_build] if instr == "COPY"]
    ignore = DOCKERIGNORE.read_text().splitlines()
    for path in outside:
        top = path.split("/")[0]
        assert top in copied, f"Cargo.toml names {path}, but the build stage does not COPY {top}/ before cargo build"
        assert f"!{top}/" in ignore, f"Cargo.toml names {path}, but .dockerignore does not let {top}/ through"
    if (chartlib.REPO / "build.rs").exists() and build is not False:
        pytest.fail("build.rs exists: copy it in the Dockerfile's dependency layer and allow it in .dockerignore")


def test_dockerignore_keeps_the_context_small():
    lines = [l.strip() for l in DOCKERIGNORE.read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0] == "*", "allow-list: ignore everything first"
    allowed = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    assert allowed == {"Cargo.toml", "Cargo.lock", "src", "bench"}, allowed


def run_binary(*args: str) -> subprocess.CompletedProcess:
    binary = chartlib.binary_path()
    if not binary.exists():
        pytest.fail(
            f"{binary} does not exist: build it first (`cargo build`); "
            "this test runs the command the image and the chart run"
        )
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30)


def test_binary_rejects_unknown_arguments():
    """Guard for the checks below: a binary that accepts anything proves nothing."""
    out = run_binary("serve", "--no-such-flag-for-portcullis")
    assert out.returncode != 0, (
        "`portcullis serve --no-such-flag-for-portcullis` exited 0: the binary does not parse its "
        "command line yet (no `serve` subcommand)"
    )


def test_image_cmd_is_a_real_subcommand():
    test_binary_rejects_unknown_arguments()
    entrypoint, cmd = entrypoint_and_cmd()
    assert cmd[0] == "serve" and "--kubernetes" in cmd
    out = run_binary(*cmd, "--help")
    assert out.returncode == 0, f"`portcullis {shlex.join(cmd)} --help` failed: {out.stderr}"
    assert "--kubernetes" in out.stdout, out.stdout


def test_chart_args_are_accepted_by_the_binary():
    """Every flag the Deployment passes (with --namespace too) parses, values included."""
    test_binary_rejects_unknown_arguments()
    r = chartlib.render({"watchNamespaces": ["team-a", "team-b"]})
    (c,) = r.one("Deployment")["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    out = run_binary(*args, "--help")
    assert out.returncode == 0, f"`portcullis {shlex.join(args)} --help` failed: {out.stderr}"
    for flag in [a for a in args if a.startswith("--")]:
        assert flag in out.stdout, f"`serve --help` does not list {flag}"
