#!/usr/bin/env bash
# Gateway overhead benchmark (see bench/README.md). Never run by the test suite.
#
# Builds the gateway and the two bench examples in release, starts the mock upstream (OpenAI
# and Anthropic Messages) and the gateway on loopback ports, then drives the same load
# (1) straight at the mock, (2) through the native route, (3) through the Model Router to the
# OpenAI upstream, (4) straight at the mock's Anthropic Messages API and (5) through the Model
# Router translated to Anthropic, non-streaming and streaming, and prints the added latency,
# the gateway's CPU per request and per streamed event, the throughput as a fraction of a
# direct call, and the issue-10 targets beside them. The `budget` and `budget-redis` paths are
# the native route again through a proxy with an LlmBudget (in-process store, or a real
# redis-server the script starts), reported beside the native path (issue 12).
#
# Knobs (environment): REQUESTS (20000), WARMUP (1000), CONCURRENCY (16), CHUNKS (20),
# CHUNK_DELAY_MS (0), MAX_SECONDS (120, per load run), AUTH (apiKey | none),
# PATHS (direct native budget budget-redis router direct-anthropic translated), MODES (json stream),
# OTEL (1 = trace every request, exported over OTLP/HTTP to the mock's /v1/traces sink),
# SKIP_BUILD (1 = use the binaries already in target/release), KEEP_TMP (1 = keep logs),
# CALLGRIND (1 = run the gateway under valgrind's callgrind and print, per path, where its
# instructions go instead of the CPU table), TOP (30, with CALLGRIND), STRACE (1 = count the
# gateway's system calls per request and path with strace instead of the CPU table).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# 20000 rather than bench-load's own default of 2000: at 2000 a run lasts 30-400 ms, which is
# only a handful of 10 ms CPU ticks in /proc/<pid>/stat, too coarse for CPU per request.
REQUESTS=${REQUESTS:-20000}
WARMUP=${WARMUP:-1000}
# 16: the issue's throughput target is stated at 16 connections.
CONCURRENCY=${CONCURRENCY:-16}
CHUNKS=${CHUNKS:-20}
CHUNK_DELAY_MS=${CHUNK_DELAY_MS:-0}
MAX_SECONDS=${MAX_SECONDS:-120}
AUTH=${AUTH:-apiKey}
ALL_PATHS="direct native budget budget-redis router direct-anthropic translated"
PATHS_GIVEN=${PATHS+1}
PATHS=${PATHS:-$ALL_PATHS}
MODES=${MODES:-json stream}
OTEL=${OTEL:-0}
CALLGRIND=${CALLGRIND:-0}
STRACE=${STRACE:-0}
TOP=${TOP:-30}

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
if [ "$CALLGRIND" = 1 ] && [ "$STRACE" = 1 ]; then
  die "CALLGRIND=1 and STRACE=1 do not go together"
fi
if [ "$STRACE" = 1 ]; then
  command -v strace >/dev/null || die "STRACE=1 needs strace (Debian package strace)"
fi
has_path() { [[ " $PATHS " == *" $1 "* ]]; }
for path in $PATHS; do
  [[ " $ALL_PATHS " == *" $path "* ]] || die "PATHS: $ALL_PATHS, not $path"
done
if has_path budget-redis && ! { command -v redis-server && command -v redis-cli; } >/dev/null; then
  [ -n "$PATHS_GIVEN" ] && die "PATHS has budget-redis: it needs redis-server and redis-cli (Debian package redis-server)"
  say "no redis-server: the budget-redis path is left out (Debian package redis-server)"
  PATHS=$(tr ' ' '\n' <<<"$PATHS" | grep -vx budget-redis | tr '\n' ' ')
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# CPU time of a live process, all threads included, in clock ticks: "utime stime".
cpu_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat") || die "process $1 is gone"
  # Fields after the `(comm)`: state is field 3, utime field 14, stime field 15.
  stat=${stat##*) }
  awk '{ print $12, $13 }' <<<"$stat"
}

wait_http() { # URL, what, pid
  # 10 s, or 120 s for a gateway started under valgrind.
  local tries=200
  [ "$CALLGRIND" = 1 ] && tries=2400
  for _ in $(seq 1 "$tries"); do
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

# ---------------------------------------------------------------- redis (budget-redis)
REDIS_PORT=
if has_path budget-redis; then
  REDIS_PORT=$(free_port)
  while [ "$REDIS_PORT" = "$MOCK_PORT" ]; do REDIS_PORT=$(free_port); done
  mkdir -p "$TMP/redis"
  # Loopback only, no persistence, no password: a throwaway server for this run.
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$TMP/redis" --protected-mode yes --logfile "$TMP/redis.log" &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 1 200); do
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
    kill -0 "$REDIS_PID" 2>/dev/null || break
    sleep 0.05
  done
  [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] \
    || { cat "$TMP/redis.log" >&2; die "redis-server did not start"; }
  say "redis-server on 127.0.0.1:$REDIS_PORT ($(redis-server --version | awk '{print $3}'))"
fi

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
  # Prices: used by the budgets' USD limit only, inert on the other paths.
  pricing: [{models: ["*"], input: "1.25", output: "10.00"}]
---
apiVersion: portcullis.dev/v1alpha1
kind: LlmProvider
metadata: {name: mock-anthropic, namespace: default}
spec:
  type: anthropic
  baseUrl: http://127.0.0.1:$MOCK_PORT
  auth: $auth_yaml
  models: {static: [bench-model]}
  pricing: [{models: ["*"], input: "3.00", output: "15.00"}]
---
apiVersion: portcullis.dev/v1alpha1
kind: LlmProxy
metadata: {name: bench, namespace: default}
spec:
  providers: [{providerRef: {name: mock}}, {providerRef: {name: mock-anthropic}}]
EOF
# The budget paths: proxies like `bench`, each with an LlmBudget of three limits that always
# admit (requests per identity, tokens per proxy, USD per proxy). Only the proxy `bench-budget`
# (in-process store) or `bench-redis` (the redis-server above) counts; `bench` has no budget.
budget_docs() { # proxy budget [store yaml]
  cat <<EOF
---
apiVersion: portcullis.dev/v1alpha1
kind: LlmProxy
metadata: {name: $1, namespace: default}
spec:
  providers: [{providerRef: {name: mock}}, {providerRef: {name: mock-anthropic}}]
---
apiVersion: portcullis.dev/v1alpha1
kind: LlmBudget
metadata: {name: $2, namespace: default}
spec:
  targetRefs: [{name: $1}]
  limits:
    - {name: requests, per: identity, requests: 1000000000, window: 1m}
    - {name: tokens, per: proxy, tokens: 1000000000000, window: 1d}
    - {name: spend, per: proxy, usd: "100000000", window: month}
EOF
  [ -z "${3:-}" ] || printf '%s\n' "$3"
}
if has_path budget; then
  budget_docs bench-budget limits >>"$TMP/config/bench.yaml"
fi
if has_path budget-redis; then
  budget_docs bench-redis limits-redis \
    '  store: {redis: {urlSecretRef: {name: budget-redis, key: url}}}' >>"$TMP/config/bench.yaml"
  cat >>"$TMP/config/bench.yaml" <<EOF
---
apiVersion: v1
kind: Secret
metadata: {name: budget-redis, namespace: default}
stringData: {url: "redis://127.0.0.1:$REDIS_PORT/0"}
EOF
fi

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
WRAP=()
if [ "$CALLGRIND" = 1 ]; then
  command -v valgrind >/dev/null && command -v callgrind_control >/dev/null \
    || die "CALLGRIND=1 needs valgrind (Debian package valgrind)"
  # Each measured run zeroes the counters first (callgrind_control --zero) and dumps its own
  # profile after (--dump=LABEL), so startup and warmups are not counted.
  WRAP=(valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.out.%p")
  say "gateway under callgrind: CPU/req figures are not printed in this mode"
elif [ "$STRACE" = 1 ]; then
  say "gateway runs are traced by strace: CPU/req figures are not printed in this mode"
fi
# No *_API_KEY from the caller's environment (only the bench config is served), no HTTP
# proxy between the gateway and the mock, and no OTEL_* but the ones above.
# shellcheck disable=SC2046
env $(env | awk -F= '/_API_KEY=|^(http|https|all|HTTP|HTTPS|ALL)_(proxy|PROXY)=|^OTEL_/ { printf "-u %s ", $1 }') \
  "${otel_env[@]}" \
  "${WRAP[@]}" "$BIN/portcullis" serve --config "$TMP/config" \
  --listen "127.0.0.1:$GW_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" 2>"$TMP/gateway.log" &
GW_PID=$!
PIDS+=("$GW_PID")
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" gateway "$GW_PID" \
  || { tail -n 40 "$TMP/gateway.log" >&2; die "the gateway did not become ready"; }

# ---------------------------------------------------------------- load
CLK_TCK=$(getconf CLK_TCK)
RESULTS=$TMP/results.jsonl
: >"$RESULTS"

# redis-server's counters: "commands evalsha-calls evalsha-usec cpu-ticks" (the INFO call
# itself is one command).
redis_stats() {
  local info t
  info=$(redis-cli -p "$REDIS_PORT" info all | tr -d '\r') || die "redis-server is gone"
  t=$(cpu_ticks "$REDIS_PID")
  awk -F'[:=,]' -v t="$t" '
    $1 == "total_commands_processed" { n = $2 }
    $1 == "cmdstat_evalsha" { calls = $3; usec = $5 }
    END { split(t, c, " "); print n + 0, calls + 0, usec + 0, c[1] + c[2] }' <<<"$info"
}

run_load() { # label url model stream(0/1) api(openai/anthropic)
  local label=$1 url=$2 model=$3 stream=$4 flags=(--api "$5")
  [ "$stream" = 1 ] && flags+=(--stream)
  # Warm up in a separate run so its CPU is not counted.
  "$BIN/examples/bench-load" --url "$url" --model "$model" "${flags[@]}" \
    --requests "$WARMUP" --warmup 0 --concurrency "$CONCURRENCY" \
    --max-seconds "$MAX_SECONDS" --label "$label-warmup" >/dev/null \
    || die "$label: warmup failed (gateway log: $TMP/gateway.log)"
  local gw0 mock0 gw1 mock1 out profiled=0
  local via=${label%%/*} strace_pid=
  if [ "$via" != direct ] && [ "$via" != direct-anthropic ]; then
    if [ "$CALLGRIND" = 1 ]; then
      profiled=1
      callgrind_control --zero "$GW_PID" >/dev/null
    elif [ "$STRACE" = 1 ]; then
      profiled=1
      strace -f -c -p "$GW_PID" -o "$TMP/strace.${label//\//-}" 2>/dev/null &
      strace_pid=$!
      sleep 1 # strace attaches to every thread before the run starts
    fi
  fi
  local redis0=- redis1=-
  [ "$via" = budget-redis ] && redis0=$(redis_stats)
  gw0=$(cpu_ticks "$GW_PID")
  mock0=$(cpu_ticks "$MOCK_PID")
  out=$("$BIN/examples/bench-load" --url "$url" --model "$model" "${flags[@]}" \
    --requests "$REQUESTS" --warmup 0 --concurrency "$CONCURRENCY" \
    --max-seconds "$MAX_SECONDS" --label "$label") \
    || { printf '%s\n' "$out" >&2; die "$label: load run failed (gateway log: $TMP/gateway.log)"; }
  gw1=$(cpu_ticks "$GW_PID")
  mock1=$(cpu_ticks "$MOCK_PID")
  [ "$via" = budget-redis ] && redis1=$(redis_stats)
  if [ "$profiled" = 1 ]; then
    if [ "$CALLGRIND" = 1 ]; then
      callgrind_control --dump="$label" "$GW_PID" >/dev/null
    else
      kill -INT "$strace_pid"
      wait "$strace_pid" || true
    fi
    PROFILES+=("$label")
  fi
  python3 - "$out" "$gw0" "$gw1" "$mock0" "$mock1" "$CLK_TCK" "$redis0" "$redis1" \
    >>"$RESULTS" <<'EOF'
import json, sys
out = json.loads(sys.argv[1])
(gu0, gs0), (gu1, gs1), (mu0, ms0), (mu1, ms1) = (map(int, a.split()) for a in sys.argv[2:6])
out["cpu_ticks"] = {
    "gateway": gu1 + gs1 - gu0 - gs0, "gateway_user": gu1 - gu0, "gateway_sys": gs1 - gs0,
    "mock": mu1 + ms1 - mu0 - ms0, "clk_tck": int(sys.argv[6]),
}
if sys.argv[7] != "-":
    # redis-server over the run: commands, EVALSHA calls and their server-side µs, CPU ticks.
    r0, r1 = (list(map(int, a.split())) for a in sys.argv[7:9])
    out["redis"] = dict(zip(("commands", "evalsha", "evalsha_usec", "cpu_ticks"),
                            (b - a for a, b in zip(r0, r1))))
print(json.dumps(out))
EOF
  case "$via" in
    budget) budget_counted limits "$label" ;;
    budget-redis) budget_counted limits-redis "$label" ;;
  esac
  printf '%s\n' "$out"
}

# A budget path measures nothing unless its LlmBudget was accepted and counts: every limit
# must show settled usage in the gateway's metrics (settlement is asynchronous: wait a little).
budget_counted() { # budget label
  for _ in $(seq 1 100); do
    python3 - "http://127.0.0.1:$ADMIN_PORT/metrics" "default/$1" <<'EOF' && return 0
import re, sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
text = opener.open(sys.argv[1], timeout=5).read().decode()
seen = {}
for line in text.splitlines():
    if line.startswith("portcullis_budget_consumed_total{"):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if labels.get("budget") == sys.argv[2]:
            seen[labels["limit"]] = float(line.rsplit(" ", 1)[1])
sys.exit(0 if all(seen.get(l, 0) > 0 for l in ("requests", "tokens", "spend")) else 1)
EOF
    sleep 0.1
  done
  grep -i 'problem\|budget' "$TMP/gateway.log" | grep -v 'portcullis::access' | tail -n 5 >&2 || true
  die "$2: the LlmBudget default/$1 did not count every limit (see the gateway log: $TMP/gateway.log)"
}

DIRECT=http://127.0.0.1:$MOCK_PORT/v1/chat/completions
NATIVE=http://127.0.0.1:$GW_PORT/v1/openai-compatible/default.bench/chat/completions
ROUTER=http://127.0.0.1:$GW_PORT/v1/model-router/default.bench/chat/completions
DIRECT_ANTHROPIC=http://127.0.0.1:$MOCK_PORT/v1/messages
BUDGET=http://127.0.0.1:$GW_PORT/v1/openai-compatible/default.bench-budget/chat/completions
BUDGET_REDIS=http://127.0.0.1:$GW_PORT/v1/openai-compatible/default.bench-redis/chat/completions

PROFILES=()
say "load: $REQUESTS requests (after $WARMUP warmup) at concurrency $CONCURRENCY per run"
for mode in $MODES; do
  case "$mode" in
    json) stream=0 ;;
    stream) stream=1 ;;
    *) die "MODES: json and/or stream, not $mode" ;;
  esac
  for path in $PATHS; do
    case "$path" in
      direct) run_load "direct/$mode" "$DIRECT" bench-model "$stream" openai ;;
      native) run_load "native/$mode" "$NATIVE" bench-model "$stream" openai ;;
      budget) run_load "budget/$mode" "$BUDGET" bench-model "$stream" openai ;;
      budget-redis) run_load "budget-redis/$mode" "$BUDGET_REDIS" bench-model "$stream" openai ;;
      router) run_load "router/$mode" "$ROUTER" openai-compatible:bench-model "$stream" openai ;;
      direct-anthropic)
        run_load "direct-anthropic/$mode" "$DIRECT_ANTHROPIC" bench-model "$stream" anthropic ;;
      translated) run_load "translated/$mode" "$ROUTER" anthropic:bench-model "$stream" openai ;;
      *) die "PATHS: $ALL_PATHS, not $path" ;;
    esac
  done
done

kill -0 "$GW_PID" 2>/dev/null || die "the gateway exited during the run"

# ---------------------------------------------------------------- profile (CALLGRIND=1)
if [ "$CALLGRIND" = 1 ]; then
  for label in "${PROFILES[@]}"; do
    # callgrind writes each dump to FILE.N, in order; find the one carrying this run's label.
    file=$(grep -l -x "desc: Trigger: dump $label" "$TMP"/callgrind.out.*.* | head -n 1) \
      || die "no callgrind dump for $label"
    printf '\n==== %s (callgrind): ' "$label"
    python3 "$ROOT/bench/callgrind_summary.py" "$file" "$REQUESTS" "$TOP"
  done
  exit 0
fi

# ---------------------------------------------------------------- system calls (STRACE=1)
if [ "$STRACE" = 1 ]; then
  for label in "${PROFILES[@]}"; do
    printf '\n==== %s (strace -f -c): system calls of the gateway per request\n' "$label"
    python3 - "$TMP/strace.${label//\//-}" "$REQUESTS" <<'EOF'
import sys
rows = []
for line in open(sys.argv[1]):
    f = line.split()
    # % time, seconds, usecs/call, calls, [errors], syscall
    if len(f) >= 5 and f[3].isdigit() and f[-1] != "total":
        rows.append((int(f[3]), f[-1]))
n = int(sys.argv[2])
print(f"  {sum(c for c, _ in rows) / n:8.2f}  all")
for calls, name in sorted(rows, reverse=True):
    if calls / n >= 0.05:
        print(f"  {calls / n:8.2f}  {name}")
EOF
  done
  exit 0
fi

# ---------------------------------------------------------------- report
python3 - "$RESULTS" "$CHUNKS" <<'EOF'
import json, sys

runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs[r["label"]] = r
chunks = int(sys.argv[2])
first = next(iter(runs.values()))

# Gateway path -> the direct call it is compared with (same upstream API, same run).
VIA = {"native": "direct", "router": "direct", "translated": "direct-anthropic"}
# The budget paths (issue 12): the native route through a proxy with an LlmBudget.
BUDGET_VIA = {"budget": "direct", "budget-redis": "direct"}
BUDGET_TARGET = 3.0
# Issue 10 targets: gateway CPU per non-streamed request, per streamed event, throughput.
CPU_TARGET = {"native": 30.0, "router": 45.0, "translated": 70.0}
EVENT_TARGET = 3.0
RPS_TARGET = {"native": 0.30}
MIN_TICKS = 50


def dur(us):
    return f"{us / 1000:.2f} ms" if abs(us) >= 1000 else f"{us:.0f} µs"


def cpu_us(r, who):
    t = r["cpu_ticks"]
    return t[who] * 1e6 / t["clk_tck"] / r["ok"], t[who]


def table(head, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*head))
    print(fmt.format(*("-" * w for w in widths)))
    for row in rows:
        print(fmt.format(*row))


def verdict(value, target, at_most, ticks):
    ok = value <= target if at_most else value >= target
    coarse = "" if ticks is None or ticks >= MIN_TICKS else f", coarse: {ticks} ticks"
    return ("met" if ok else "NOT met") + coarse


print()
print(f"requests per run: {first['requests']}, concurrency: {first['concurrency']}, "
      f"chunks per stream: {chunks}, CPU resolution: 1 tick = "
      f"{1e6 / first['cpu_ticks']['clk_tck']:.0f} µs per run")
print()
head = ("path", "vs", "p50", "p99", "req/s", "req/s ÷ direct", "+p50", "+p99", "p50 ×",
        "p99 ×", "gw CPU/req", "gw sys", "mock CPU/req", "gw/mock CPU")
rows = []
for mode in ("json", "stream"):
    for direct in ("direct", "direct-anthropic"):
        d = runs.get(f"{direct}/{mode}")
        if d is None:
            continue
        dl = d["latency_us"]
        mock_direct, ticks = cpu_us(d, "mock")
        rows.append((f"{direct}/{mode}", "-", dur(dl["p50"]), dur(dl["p99"]), f"{d['rps']:.0f}",
                     "-", "-", "-", "-", "-", "-", "-", f"{mock_direct:.1f} µs ({ticks}t)", "-"))
    for via, direct in (VIA | BUDGET_VIA).items():
        r = runs.get(f"{via}/{mode}")
        if r is None:
            continue
        d = runs.get(f"{direct}/{mode}")
        l = r["latency_us"]
        gw, gw_t = cpu_us(r, "gateway")
        mock, mock_t = cpu_us(r, "mock")
        ratio = f"{gw / mock:.1f}×" if mock_t else "n/a (0 ticks)"
        sys_share = f"{r['cpu_ticks']['gateway_sys'] / gw_t * 100:.0f} %" if gw_t else "-"
        if d is None:
            cmp = ("(no direct run)", "-", "-", "-", "-", "-")
        else:
            dl = d["latency_us"]
            cmp = (direct, f"{r['rps'] / d['rps'] * 100:.0f} %",
                   dur(l["p50"] - dl["p50"]), dur(l["p99"] - dl["p99"]),
                   f"{l['p50'] / dl['p50']:.2f}", f"{l['p99'] / dl['p99']:.2f}")
        rows.append((f"{via}/{mode}", cmp[0], dur(l["p50"]), dur(l["p99"]), f"{r['rps']:.0f}",
                     cmp[1], cmp[2], cmp[3], cmp[4], cmp[5],
                     f"{gw:.1f} µs ({gw_t}t)", sys_share, f"{mock:.1f} µs ({mock_t}t)", ratio))
table(head, rows)
print()
print("vs: the direct call each gateway path is compared with (same upstream API, same run);")
print("req/s ÷ direct: throughput through the gateway / throughput of that direct call;")
print("+p50/+p99: gateway minus direct latency; p50 ×/p99 ×: gateway / direct latency;")
print("CPU/req: utime+stime from /proc/<pid>/stat over the measured run / requests (t = ticks);")
print("gw sys: the kernel's share (stime) of the gateway's CPU time (system calls, TCP on loopback);")
print("gw/mock CPU: gateway CPU per request / mock upstream CPU per request in the same run.")

# Issue 10 targets, beside the figures of this run.
rows = []
for via in ("native", "router", "translated"):
    r = runs.get(f"{via}/json")
    if r is None:
        continue
    gw, ticks = cpu_us(r, "gateway")
    rows.append((f"gateway CPU per request, {via}/json", f"{gw:.1f} µs ({ticks}t)",
                 f"≤ {CPU_TARGET[via]:.0f} µs", verdict(gw, CPU_TARGET[via], True, ticks)))
for via in ("native", "router", "translated"):
    j, s = runs.get(f"{via}/json"), runs.get(f"{via}/stream")
    if j is None or s is None:
        continue
    (gj, tj), (gs, ts) = cpu_us(j, "gateway"), cpu_us(s, "gateway")
    per_event = (gs - gj) / chunks
    rows.append((f"gateway CPU per streamed event, {via}", f"{per_event:.2f} µs",
                 f"≤ {EVENT_TARGET:.0f} µs", verdict(per_event, EVENT_TARGET, True, min(tj, ts))))
    user = lambda r: r["cpu_ticks"]["gateway_user"] * 1e6 / r["cpu_ticks"]["clk_tck"] / r["ok"]
    user_event = (user(s) - user(j)) / chunks
    rows.append((f"  of which user space (utime only), {via}", f"{user_event:.2f} µs", "-", "-"))
for via, direct in VIA.items():
    for mode in ("json", "stream"):
        r, d = runs.get(f"{via}/{mode}"), runs.get(f"{direct}/{mode}")
        if r is None or d is None:
            continue
        frac = r["rps"] / d["rps"]
        target = RPS_TARGET.get(via) if mode == "json" else None
        rows.append((f"throughput ÷ {direct}, {via}/{mode}", f"{frac * 100:.0f} %",
                     f"≥ {target * 100:.0f} %" if target else "-",
                     verdict(frac, target, False, None) if target else "-"))
if rows:
    print()
    print(f"issue 10 targets (the throughput target is stated at 16 connections; this run: "
          f"{first['concurrency']}):")
    table(("figure", "measured", "target", ""), rows)
    print()
    print(f"per streamed event: (stream CPU/req − json CPU/req) / CHUNKS ({chunks}); both "
          "upstreams send CHUNKS events per stream (OpenAI adds `data: [DONE]`).")
    print(f"A verdict marked `coarse` rests on fewer than {MIN_TICKS} CPU ticks: raise REQUESTS.")

# Issue 12: what an LlmBudget adds to the native route, against the native run just before.
rows = []
for mode in ("json", "stream"):
    n = runs.get(f"native/{mode}")
    for via in BUDGET_VIA:
        r = runs.get(f"{via}/{mode}")
        if r is None:
            continue
        gw, gw_t = cpu_us(r, "gateway")
        l = r["latency_us"]
        d = runs.get(f"direct/{mode}")
        redis = r.get("redis")
        if redis:
            rcmd = f"{redis['evalsha'] / r['ok']:.2f}"
            rus = f"{redis['evalsha_usec'] / max(redis['evalsha'], 1):.1f} µs"
            rcpu = f"{redis['cpu_ticks'] * 1e6 / r['cpu_ticks']['clk_tck'] / r['ok']:.1f} µs"
        else:
            rcmd = rus = rcpu = "-"
        if n is None:
            cmp = ("(no native run)",) + ("-",) * 4
        else:
            ngw, _ = cpu_us(n, "gateway")
            nl = n["latency_us"]
            cmp = (f"{gw - ngw:+.1f} µs", dur(l["p50"] - nl["p50"]), dur(l["p99"] - nl["p99"]),
                   f"{r['rps'] / n['rps'] * 100:.0f} %",
                   f"{r['sse_events']} vs {n['sse_events']}" if mode == "stream" else "-")
        rows.append((f"{via}/{mode}", f"{gw:.1f} µs ({gw_t}t)", cmp[0], dur(l["p50"]), cmp[1],
                     cmp[2], cmp[3], f"{r['rps'] / d['rps'] * 100:.0f} %" if d else "-", cmp[4],
                     rcmd, rus, rcpu))
if rows:
    print()
    print("issue 12: an LlmBudget on the native route (proxy with three always-admitting limits: "
          "requests per identity, tokens per proxy, USD per proxy), against native in the same run:")
    table(("path", "gw CPU/req", "Δ CPU vs native", "p50", "+p50 vs native", "+p99 vs native",
           "req/s ÷ native", "req/s ÷ direct", "events to client", "EVALSHA/req",
           "redis µs/EVALSHA", "redis CPU/req"), rows)
    rows = []
    n, b, br = runs.get("native/json"), runs.get("budget/json"), runs.get("budget-redis/json")
    if n and b:
        (ngw, nt), (bgw, bt) = cpu_us(n, "gateway"), cpu_us(b, "gateway")
        # Each run's CPU time is known to ±1 tick: the difference to ±2 ticks per run.
        q = 2 * 1e6 / n["cpu_ticks"]["clk_tck"] / min(n["ok"], b["ok"])
        rows.append(("gateway CPU added per request, in-process store (budget/json − native/json)",
                     f"{bgw - ngw:+.2f} µs (± {q:.2f} µs ticks)", f"≤ {BUDGET_TARGET:.0f} µs",
                     verdict(bgw - ngw, BUDGET_TARGET, True, min(nt, bt))))
    if n and br:
        (ngw, _), (rgw, _) = cpu_us(n, "gateway"), cpu_us(br, "gateway")
        rows.append(("gateway CPU added per request, Redis store (budget-redis/json − native/json)",
                     f"{rgw - ngw:+.2f} µs", "-", "-"))
    if br and br.get("redis"):
        per = br["redis"]["evalsha"] / br["ok"]
        rows.append(("Redis round trips per request (EVALSHA: admission + settlement)",
                     f"{per:.2f}", "1 + 1", "met" if per <= 2.01 else "NOT met"))
    if b and br:
        rows.append(("p50 latency, Redis store − in-process store (the admission round trip)",
                     dur(br["latency_us"]["p50"] - b["latency_us"]["p50"]), "-", "-"))
    for via in BUDGET_VIA:
        s_, ns = runs.get(f"{via}/stream"), runs.get("native/stream")
        if s_ and ns:
            rows.append((f"streamed: gateway CPU added per request, {via} − native",
                         f"{cpu_us(s_, 'gateway')[0] - cpu_us(ns, 'gateway')[0]:+.1f} µs", "-", "-"))
    if rows:
        print()
        table(("figure", "measured", "target", ""), rows)
        print()
        print("events to client: SSE events the client got, budget vs native (the gateway asks a "
              "budgeted stream for usage and hides the usage-only chunk, so they match);")
        print("EVALSHA/req, redis µs/EVALSHA, redis CPU/req: redis-server's INFO and CPU time over "
              "the run (the settlement runs after the response, off the request path).")
EOF
