#!/usr/bin/env bash
# Instructions the gateway executes per event, counted by callgrind: the steadiest figure this
# machine gives (no hardware counters; CPU time drifts ±15% between runs). For each variant, a
# `hookyard run` under `valgrind --tool=callgrind` takes WARMUP events, its counters are zeroed,
# then it takes EVENTS more (CLIENTS keep-alive connections), delivers them to a sink, and is
# stopped with SIGTERM (so what a variant does at shutdown for those events, e.g. sending its
# last spans, is counted). Instructions per event = the count from the zeroing to the exit /
# EVENTS; the ratio of each variant's median over ROUNDS interleaved rounds to the first
# variant's is the figure (between runs the same variant moves about ±1%: SQLite's WAL
# checkpoints and the batches that form depend on timing).
#
#   bench/instructions.sh                                   # hookyard-1 hookyard-1-otlp, 3 rounds
#   VARIANTS="hookyard-1 hookyard-1-otlp hookyard-1-otlp-0.1" ROUNDS=5 bench/instructions.sh
#
# Variants (as in bench/e2e.sh: one GitHub-signed route to one Standard-Webhooks-signed sink):
#   hookyard-1            no tracing
#   hookyard-1-otlp       exporting every trace (telemetry.otlp) to a second `hookyard receive`
#   hookyard-1-otlp-0.1   the same with sample_ratio 0.1
# Prints one line per variant, then the ratios; writes callgrind's files to $WORK (kept with
# KEEP_WORKDIR=1, for callgrind_annotate).
set -euo pipefail
export LC_ALL=C

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
BENCH_NAME=instructions
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

VARIANTS=${VARIANTS:-"hookyard-1 hookyard-1-otlp"}
EVENTS=${EVENTS:-2000}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-200}
CLIENTS=${CLIENTS:-8}
HOOKYARD=${HOOKYARD:-$ROOT/target/release/hookyard}
PORT_BASE=${PORT_BASE:-18180}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
LOAD_CPU=${LOAD_CPU:-0}
SUT_CPU=${SUT_CPU:-1}
DRAIN_MAX=${DRAIN_MAX:-60}
DRAIN_STABLE_MS=${DRAIN_STABLE_MS:-500}
positive_int EVENTS "$EVENTS"
positive_int CLIENTS "$CLIENTS"
positive_int ROUNDS "$ROUNDS"

HY_PORT=$PORT_BASE
SINK_PORT=$((PORT_BASE + 1))
OTLP_PORT=$((PORT_BASE + 2))
ADMIN_PORT=$((PORT_BASE + 3))
SINK_ADDR="127.0.0.1:$SINK_PORT"
GITHUB_SECRET="bench-secret"
BODY_FILE="$BENCH_DIR/e2e/github_push.json"

for v in $VARIANTS; do
  case "$v" in hookyard-1 | hookyard-1-otlp | hookyard-1-otlp-0.1) ;; *) die "unknown variant '$v'" ;; esac
done
for t in valgrind callgrind_control python3 curl taskset; do
  command -v "$t" >/dev/null || die "$t not found (apt-get install valgrind python3 curl util-linux)"
done
ensure_built "$HOOKYARD"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hookyard-instr.XXXXXX")

# receiver PORT NAME: a `hookyard receive --quiet` on the load CPU; sets RECEIVER_PID.
receiver() {
  taskset -c "$LOAD_CPU" "$HOOKYARD" receive --listen "127.0.0.1:$1" --quiet >"$WORK/$2.out" 2>"$WORK/$2.err" &
  RECEIVER_PID=$!
  track "$RECEIVER_PID"
  listen_addr "$WORK/$2.out" "$RECEIVER_PID" "hookyard receive ($2)" >/dev/null
}

# config VARIANT FILE DB
config() {
  {
    echo "server: { listen: \"127.0.0.1:$HY_PORT\" }"
    echo "admin: { listen: \"127.0.0.1:$ADMIN_PORT\", token: \"bench-admin-token\" }"
    case "$1" in
      hookyard-1-otlp) echo "telemetry: { otlp: { endpoint: \"http://127.0.0.1:$OTLP_PORT\" } }" ;;
      hookyard-1-otlp-0.1)
        echo "telemetry: { otlp: { endpoint: \"http://127.0.0.1:$OTLP_PORT\", sample_ratio: 0.1 } }"
        ;;
    esac
    echo 'egress: { allow: ["127.0.0.0/8"] }'
    echo "storage: { path: \"$3\" }"
    echo "sources: { github: { path: /hooks/github, verify: { scheme: github, secret: \"$GITHUB_SECRET\" } } }"
    echo 'destinations:'
    echo "  sink1: { url: \"http://$SINK_ADDR/sink1\", sign: { scheme: standard-webhooks, secret: \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\" } }"
    echo 'routes: [ { name: all-pushes, source: github, when: [ { header: X-GitHub-Event, equals: push } ], to: [sink1] } ]'
  } >"$2"
}

# post N: N signed pushes over CLIENTS keep-alive connections; dies unless all were answered 202.
post() {
  taskset -c "$LOAD_CPU" python3 - "$1" "$CLIENTS" "$HY_PORT" "$GITHUB_SECRET" "$BODY_FILE" <<'EOF'
import hashlib, hmac, http.client, sys, threading
n, clients, port, secret, body_file = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
body = open(body_file, "rb").read()
sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
headers = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-Hub-Signature-256": sig}
bad = []
def run(count):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(count):
        c.request("POST", "/hooks/github", body, headers)
        r = c.getresponse()
        r.read()
        if r.status != 202:
            bad.append(r.status)
threads = [threading.Thread(target=run, args=(n // clients + (i < n % clients),)) for i in range(clients)]
[t.start() for t in threads]
[t.join() for t in threads]
if bad:
    sys.exit(f"{len(bad)} of {n} not answered 202: {sorted(set(bad))}")
EOF
}

receiver "$SINK_PORT" sink
receiver "$OTLP_PORT" otlp
RESULTS=()
for ((round = 1; round <= ROUNDS; round++)); do
for v in $VARIANTS; do
  run="$v.$round"
  config "$v" "$WORK/$run.yaml" "$WORK/$run.db"
  out="$WORK/callgrind.$run"
  (cd "$WORK" && HOOKYARD_WORKER_THREADS=1 RUST_LOG=warn exec taskset -c "$SUT_CPU" \
    valgrind --tool=callgrind --callgrind-out-file="$out" "$HOOKYARD" run --config "$WORK/$run.yaml" \
    >"$WORK/$run.out" 2>"$WORK/$run.err") &
  pid=$!
  track "$pid"
  for ((i = 0; i < 600; i++)); do
    grep -q '^listening on' "$WORK/$run.out" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$WORK/$run.err" >&2; die "$run exited before listening"; }
    sleep 0.1
  done
  start=$(sink_count)
  post "$WARMUP"
  drain $((start + WARMUP))
  ((DRAIN_TIMEOUT == 0)) || die "$v: the warm-up was not delivered within ${DRAIN_MAX} s"
  callgrind_control --zero "$pid" >/dev/null 2>&1 || callgrind_control --zero >/dev/null
  post "$EVENTS"
  drain $((start + WARMUP + EVENTS))
  ((DRAIN_TIMEOUT == 0)) || die "$v: $EVENTS events were not delivered within ${DRAIN_MAX} s"
  # not stop_pid: under valgrind a graceful stop can take longer than its 5 s grace
  kill -TERM "$pid"
  wait "$pid" || true
  untrack "$pid"
  # callgrind writes one file per dump: the zeroing's (before the events) and the exit's
  total=$({ cat "$out"; cat "$out".* 2>/dev/null || true; } | sed -n 's/^summary: //p' | sort -n | tail -n 1)
  [[ -n "$total" ]] || die "$v: no callgrind summary in $out"
  per=$((total / EVENTS))
  RESULTS+=("$v $per")
  log "round $round, $v: $total instructions for $EVENTS events: $per per event"
done
done
printf '%s\n' "${RESULTS[@]}" | python3 -c '
import statistics, sys
rows = [line.split() for line in sys.stdin if line.strip()]
order = list(dict.fromkeys(v for v, _ in rows))
per = {v: [int(n) for w, n in rows if w == v] for v in order}
base = statistics.median(per[order[0]])
for v in order:
    m = statistics.median(per[v])
    print(f"{v:<22} median {m:>9.0f} instructions/event  x{m / base:.3f}  (+{m - base:.0f})  rounds {per[v]}")
' 
