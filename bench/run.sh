#!/usr/bin/env bash
# Gateway overhead benchmark (see bench/README.md). Never run by the test suite.
#
# Builds the gateway and the two bench examples in release, starts the mock upstream and the
# gateway on loopback ports, then drives the same load (1) straight at the mock, (2) through
# the native route and (3) through the Model Router, non-streaming and streaming, and prints
# the added latency and the gateway's CPU per request.
#
# Knobs (environment): REQUESTS (20000), WARMUP (1000), CONCURRENCY (8), CHUNKS (20),
# CHUNK_DELAY_MS (0), MAX_SECONDS (120, per load run), AUTH (apiKey | none),
# OTEL (1 = trace every request, exported over OTLP/HTTP to the mock's /v1/traces sink),
# SKIP_BUILD (1 = use the binaries already in target/release), KEEP_TMP (1 = keep logs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# 20000 rather than bench-load's own default of 2000: at 2000 a run lasts 30-400 ms, which is
# only a handful of 10 ms CPU ticks in /proc/<pid>/stat, too coarse for CPU per request.
REQUESTS=${REQUESTS:-20000}
WARMUP=${WARMUP:-1000}
CONCURRENCY=${CONCURRENCY:-8}
CHUNKS=${CHUNKS:-20}
CHUNK_DELAY_MS=${CHUNK_DELAY_MS:-0}
MAX_SECONDS=${MAX_SECONDS:-120}
AUTH=${AUTH:-apiKey}
OTEL=${OTEL:-0}

BIN=$ROOT/target/release
TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")
PIDS=()

cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "${KEEP_TMP:-0}" = 1 ] || [ "$status" -ne 0 ]; then
    echo "logs kept in $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is needed (free ports, the report table)"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# CPU time (utime+stime, in clock ticks) of a live process, all threads included.
cpu_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat") || die "process $1 is gone"
  # Fields after the `(comm)`: state is field 3, utime field 14, stime field 15.
  stat=${stat##*) }
  awk '{ print $12 + $13 }' <<<"$stat"
}

wait_http() { # URL, what, pid
  for _ in $(seq 1 200); do
    if ! kill -0 "$3" 2>/dev/null; then
      return 1
    fi
    if python3 - "$1" <<'EOF' 2>/dev/null; then
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
sys.exit(0 if opener.open(sys.argv[1], timeout=1).status == 200 else 1)
EOF
      return 0
    fi
    sleep 0.05
  done
  return 1
}

# ---------------------------------------------------------------- build
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  say "cargo build --release --examples --bin portcullis"
  flock /tmp/cargo.lock cargo build --release --examples --bin portcullis
fi
for b in portcullis examples/bench-mock-upstream examples/bench-load; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing (run without SKIP_BUILD=1)"
done

# ---------------------------------------------------------------- mock upstream
MOCK_PORT=$(free_port)
say "mock upstream on 127.0.0.1:$MOCK_PORT ($CHUNKS chunks per stream, ${CHUNK_DELAY_MS} ms apart)"
"$BIN/examples/bench-mock-upstream" "$MOCK_PORT" --chunks "$CHUNKS" \
  --chunk-delay-ms "$CHUNK_DELAY_MS" 2>"$TMP/mock.log" &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_http "http://127.0.0.1:$MOCK_PORT/v1/models" mock "$MOCK_PID" \
  || { cat "$TMP/mock.log" >&2; die "the mock upstream did not start"; }

# ---------------------------------------------------------------- gateway
mkdir -p "$TMP/config"
case "$AUTH" in
  apiKey) auth_yaml='{apiKey: {secretRef: {name: k}}}' ;;
  none) auth_yaml='{none: {}}' ;;
  *) die "AUTH must be apiKey or none" ;;
esac
cat >"$TMP/config/bench.yaml" <<EOF
apiVersion: v1
kind: Secret
metadata: {name: k, namespace: default}
stringData: {apiKey: bench-upstream-key}
---
apiVersion: portcullis.dev/v1alpha1
kind: LlmProvider
metadata: {name: mock, namespace: default}
spec:
  type: openai-compatible
  baseUrl: http://127.0.0.1:$MOCK_PORT/v1
  auth: $auth_yaml
  models: {static: [bench-model]}
---
apiVersion: portcullis.dev/v1alpha1
kind: LlmProxy
metadata: {name: bench, namespace: default}
spec:
  providers: [{providerRef: {name: mock}}]
EOF

GW_PORT=$(free_port)
ADMIN_PORT=$(free_port)
while [ "$ADMIN_PORT" = "$GW_PORT" ] || [ "$ADMIN_PORT" = "$MOCK_PORT" ]; do ADMIN_PORT=$(free_port); done
# Tracing: every request sampled and exported to the mock's OTLP sink; or no OTEL_* at all.
otel_env=()
if [ "$OTEL" = 1 ]; then
  # A queue large enough that no span is dropped at bench rates (dropping would hide cost).
  otel_env=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$MOCK_PORT" OTEL_TRACES_SAMPLER=always_on
            OTEL_SERVICE_NAME=portcullis-bench OTEL_BSP_MAX_QUEUE_SIZE=65536
            OTEL_BSP_SCHEDULE_DELAY=500)
fi
say "gateway on 127.0.0.1:$GW_PORT (admin $ADMIN_PORT), auth $AUTH, tracing $([ "$OTEL" = 1 ] && echo 100% || echo off)"
# No *_API_KEY from the caller's environment (only the bench config is served), no HTTP
# proxy between the gateway and the mock, and no OTEL_* but the ones above.
# shellcheck disable=SC2046
env $(env | awk -F= '/_API_KEY=|^(http|https|all|HTTP|HTTPS|ALL)_(proxy|PROXY)=|^OTEL_/ { printf "-u %s ", $1 }') \
  "${otel_env[@]}" \
  "$BIN/portcullis" serve --config "$TMP/config" \
  --listen "127.0.0.1:$GW_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" 2>"$TMP/gateway.log" &
GW_PID=$!
PIDS+=("$GW_PID")
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" gateway "$GW_PID" \
  || { tail -n 40 "$TMP/gateway.log" >&2; die "the gateway did not become ready"; }

# ---------------------------------------------------------------- load
CLK_TCK=$(getconf CLK_TCK)
RESULTS=$TMP/results.jsonl
: >"$RESULTS"

run_load() { # label url model stream(0/1)
  local label=$1 url=$2 model=$3 stream=$4 flags=()
  [ "$stream" = 1 ] && flags+=(--stream)
  # Warm up in a separate run so its CPU is not counted.
  "$BIN/examples/bench-load" --url "$url" --model "$model" "${flags[@]}" \
    --requests "$WARMUP" --warmup 0 --concurrency "$CONCURRENCY" \
    --max-seconds "$MAX_SECONDS" --label "$label-warmup" >/dev/null \
    || die "$label: warmup failed (gateway log: $TMP/gateway.log)"
  local gw0 mock0 gw1 mock1 out
  gw0=$(cpu_ticks "$GW_PID")
  mock0=$(cpu_ticks "$MOCK_PID")
  out=$("$BIN/examples/bench-load" --url "$url" --model "$model" "${flags[@]}" \
    --requests "$REQUESTS" --warmup 0 --concurrency "$CONCURRENCY" \
    --max-seconds "$MAX_SECONDS" --label "$label") \
    || { printf '%s\n' "$out" >&2; die "$label: load run failed (gateway log: $TMP/gateway.log)"; }
  gw1=$(cpu_ticks "$GW_PID")
  mock1=$(cpu_ticks "$MOCK_PID")
  python3 - "$out" "$((gw1 - gw0))" "$((mock1 - mock0))" "$CLK_TCK" >>"$RESULTS" <<'EOF'
import json, sys
out = json.loads(sys.argv[1])
out["cpu_ticks"] = {"gateway": int(sys.argv[2]), "mock": int(sys.argv[3]), "clk_tck": int(sys.argv[4])}
print(json.dumps(out))
EOF
  printf '%s\n' "$out"
}

DIRECT=http://127.0.0.1:$MOCK_PORT/v1/chat/completions
NATIVE=http://127.0.0.1:$GW_PORT/v1/openai-compatible/default.bench/chat/completions
ROUTER=http://127.0.0.1:$GW_PORT/v1/model-router/default.bench/chat/completions

say "load: $REQUESTS requests (after $WARMUP warmup) at concurrency $CONCURRENCY per run"
for stream in 0 1; do
  mode=$([ "$stream" = 1 ] && echo stream || echo json)
  run_load "direct/$mode" "$DIRECT" bench-model "$stream"
  run_load "native/$mode" "$NATIVE" bench-model "$stream"
  run_load "router/$mode" "$ROUTER" openai-compatible:bench-model "$stream"
done

kill -0 "$GW_PID" 2>/dev/null || die "the gateway exited during the run"

# ---------------------------------------------------------------- report
python3 - "$RESULTS" <<'EOF'
import json, sys

runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs[r["label"]] = r

def dur(us):
    return f"{us / 1000:.2f} ms" if abs(us) >= 1000 else f"{us:.0f} µs"

def cpu_us(r, who):
    t = r["cpu_ticks"]
    return t[who] * 1e6 / t["clk_tck"] / r["ok"], t[who]

print()
print(f"requests per run: {next(iter(runs.values()))['requests']}, "
      f"concurrency: {next(iter(runs.values()))['concurrency']}, "
      f"CPU resolution: 1 tick = {1e6 / next(iter(runs.values()))['cpu_ticks']['clk_tck']:.0f} µs per run")
print()
head = ("path", "p50", "p99", "req/s", "+p50", "+p99", "p50 ×", "p99 ×",
        "gw CPU/req", "mock CPU/req", "gw/mock CPU")
rows = []
for mode in ("json", "stream"):
    d = runs[f"direct/{mode}"]
    dl = d["latency_us"]
    mock_direct, ticks = cpu_us(d, "mock")
    rows.append((f"direct/{mode}", dur(dl["p50"]), dur(dl["p99"]), f"{d['rps']:.0f}",
                 "-", "-", "-", "-", "-", f"{mock_direct:.1f} µs ({ticks}t)", "-"))
    for via in ("native", "router"):
        r = runs[f"{via}/{mode}"]
        l = r["latency_us"]
        gw, gw_t = cpu_us(r, "gateway")
        mock, mock_t = cpu_us(r, "mock")
        ratio = f"{gw / mock:.1f}×" if mock_t else "n/a (0 ticks)"
        rows.append((f"{via}/{mode}", dur(l["p50"]), dur(l["p99"]), f"{r['rps']:.0f}",
                     dur(l["p50"] - dl["p50"]), dur(l["p99"] - dl["p99"]),
                     f"{l['p50'] / dl['p50']:.2f}", f"{l['p99'] / dl['p99']:.2f}",
                     f"{gw:.1f} µs ({gw_t}t)", f"{mock:.1f} µs ({mock_t}t)", ratio))
widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
fmt = "  ".join(f"{{:<{w}}}" for w in widths)
print(fmt.format(*head))
print(fmt.format(*("-" * w for w in widths)))
for row in rows:
    print(fmt.format(*row))
print()
print("+p50/+p99: gateway minus direct latency; p50 ×/p99 ×: gateway / direct latency;")
print("CPU/req: utime+stime from /proc/<pid>/stat over the measured run / requests (t = ticks);")
print("gw/mock CPU: gateway CPU per request / mock upstream CPU per request in the same run.")
EOF
