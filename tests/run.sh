#!/usr/bin/env bash
# The one test command (README "Quick start"; .ci/run calls it too).
#
# Lints, builds, runs the Rust unit and integration tests, then the Python suites that
# drive the real binary with the providers' official SDKs and render the Helm chart.
# Python packages go into a local virtualenv (.venv), created on first use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "cargo build (the binary the Python suites drive)"
cargo build --locked

step "cargo test"
cargo test --locked

step "Python virtualenv (.venv) with tests/requirements.txt"
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv; then
    rm -rf .venv
    # Debian's python3 ships venv separately; install it when we may.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv
    fi
    python3 -m venv .venv || {
      echo "python3 -m venv failed: install it with 'apt-get install -y python3-venv'" >&2
      exit 1
    }
  fi
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt

step "redis-server (the LlmBudget Redis suites start a real one on a free 127.0.0.1 port)"
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq redis-server
  else
    echo "redis-server is missing: install Debian's package (apt-get install -y redis-server)" >&2
    exit 1
  fi
fi

step "pytest (SDK end-to-end suites, the Kubernetes controller against a fake API server, the Helm chart)"
export PORTCULLIS_BIN="$PWD/target/debug/portcullis"
.venv/bin/python -m pytest tests/sdk tests/k8s tests/chart -q -p no:cacheprovider
