#!/usr/bin/env bash
# Durability benchmark: what acknowledging only after a durable commit costs.
# Accepted events/s and ingress latency of `hookyard run` with
#   full    storage.sync: full    (fsync per group commit; the default)
#   normal  storage.sync: normal  (WAL, no fsync per commit)
#   memory  storage.path: ":memory:" (the same code path, no disk; the baseline)
# in one run, rounds interleaved (full, normal, memory, full, ...) so that drift
# of the machine hits every mode alike.
#
#   bench/durability.sh                          # 3 rounds x 10 s, 64 connections
#   ROUNDS=1 DURATION=5s bench/durability.sh     # quick look
#
# wrk (-t1) POSTs the same 1 KiB JSON event (bench/durability/event.json) to an
# unsigned source; one route sends it to one destination, `hookyard receive
# --quiet` (the sink). wrk and the sink run on LOAD_CPU, hookyard on SUT_CPU
# (taskset), with HOOKYARD_WORKER_THREADS worker threads and RUST_LOG=warn.
# Each run gets a fresh store in a directory under WORK_PARENT, which must be a
# real disk (not tmpfs) for `sync` to mean anything.
#
# accepted/s = wrk's 2xx responses (all 202 on this path) / wrk's duration; a
# run with any non-2xx is flagged. After each run the script waits until the
# sink has every accepted event. Prints a table and writes
# bench/results/durability-<UTC timestamp>.json (ignored by git).
#
# Parameters (environment):
#   ROUNDS=3  DURATION=10s  CONNECTIONS=64  WARMUP=1s (0 = none)
#   MODES="full normal memory"  HOOKYARD_WORKER_THREADS=2  LOAD_CPU=0  SUT_CPU=1
#   HOOKYARD=target/release/hookyard (built with `cargo build --release` when
#   missing or older than src/)  WORK_PARENT=target  DRAIN_MAX=30 (s)
#   RESULTS_DIR=bench/results  KEEP_WORKDIR=0
#
# Its files (payload, wrk script, report) are in bench/durability/; the helpers
# it shares with bench/e2e.sh in bench/lib.sh.
set -euo pipefail
export LC_ALL=C

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
HERE="$BENCH_DIR/durability"
BENCH_NAME=durability
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

# ---------------------------------------------------------------- parameters
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-1s}
MODES=${MODES:-"full normal memory"}
WORKER_THREADS=${HOOKYARD_WORKER_THREADS:-2}
LOAD_CPU=${LOAD_CPU:-0}
SUT_CPU=${SUT_CPU:-1}
HOOKYARD=${HOOKYARD:-target/release/hookyard}
WORK_PARENT=${WORK_PARENT:-$ROOT/target}
DRAIN_MAX=${DRAIN_MAX:-30}             # s: longest wait for the sink after wrk stops
DRAIN_STABLE_MS=${DRAIN_STABLE_MS:-300} # ms without sink growth, once all are in, that ends a drain
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
BODY_FILE="$HERE/event.json"
LUA="$HERE/post_event.lua"

case "$HOOKYARD" in /*) ;; *) HOOKYARD="$ROOT/$HOOKYARD" ;; esac
positive_int ROUNDS "$ROUNDS"
positive_int CONNECTIONS "$CONNECTIONS"
positive_int HOOKYARD_WORKER_THREADS "$WORKER_THREADS"
for m in $MODES; do
  case "$m" in full | normal | memory) ;; *) die "unknown mode '$m' (full, normal, memory)" ;; esac
done

DURATION_S=$(dur_secs "$DURATION")
WARMUP_S=$(dur_secs "$WARMUP")
[[ "$DURATION_S" =~ ^[0-9]+$ && "$DURATION_S" -ge 1 ]] || die "DURATION must be like 10s or 1m"
[[ "$WARMUP_S" =~ ^[0-9]+$ ]] || die "WARMUP must be like 1s or 0"

# ------------------------------------------------------------- dependencies
mapfile -t missing < <(missing_tools)
if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
for t in wrk curl python3 taskset; do command -v "$t" >/dev/null || die "$t not found"; done

ensure_built "$HOOKYARD"
[[ -f "$BODY_FILE" && -f "$LUA" ]] || die "$BODY_FILE or $LUA missing"

pin_cpus
CLK_TCK=$(getconf CLK_TCK)

mkdir -p "$WORK_PARENT" "$RESULTS_DIR"
WORK=$(mktemp -d "$WORK_PARENT/hookyard-durability.XXXXXX")
STORE_FS=$(stat -f -c %T "$WORK")
[[ "$STORE_FS" == tmpfs || "$STORE_FS" == ramfs ]] \
  && die "$WORK is on $STORE_FS: fsync costs nothing there; set WORK_PARENT to a directory on disk"
TS=$(date -u +%Y%m%dT%H%M%SZ)
ROWS="$WORK/rows.tsv"
BODY_BYTES=$(wc -c <"$BODY_FILE")

# ------------------------------------------------------------------ helpers
# store_bytes DIR: size of the database, its WAL and shared memory (0 for :memory:).
store_bytes() {
  local total=0 f
  for f in "$1"/hookyard.db "$1"/hookyard.db-wal "$1"/hookyard.db-shm; do
    [[ -f "$f" ]] && total=$((total + $(stat -c %s "$f")))
  done
  echo "$total"
}

# dur_wrk SECONDS OUTFILE: one wrk run against $URL (bench/durability/post_event.lua).
dur_wrk() { run_wrk "$URL" "$1" "$2" "$LUA" DUR_RESULT "$BODY_FILE"; }

# wrk_accepted OUTFILE: requests - non-2xx.
wrk_accepted() {
  sed -n 's/^DUR_RESULT requests=\([0-9]*\) .* err_status=\([0-9]*\) .*/\1 \2/p' "$1" | {
    read -r req st
    echo $((req - st))
  }
}

# ------------------------------------------------------------------ servers
start_sink() {
  HOOKYARD_WORKER_THREADS=1 RUST_LOG=warn taskset -c "$LOAD_CPU" \
    "$HOOKYARD" receive --listen 127.0.0.1:0 --quiet >"$WORK/sink.out" 2>"$WORK/sink.err" &
  SINK_PID=$!
  track "$SINK_PID"
  SINK_ADDR=$(listen_addr "$WORK/sink.out" "$SINK_PID" "hookyard receive (sink)")
  sink_count >/dev/null
  log "sink: hookyard receive on $SINK_ADDR (pid $SINK_PID, CPU $LOAD_CPU)"
}

write_config() {
  local mode=$1 file=$2 storage
  case "$mode" in
    full) storage='{ path: hookyard.db, sync: full }' ;;
    normal) storage='{ path: hookyard.db, sync: normal }' ;;
    memory) storage='{ path: ":memory:" }' ;;
  esac
  cat >"$file" <<EOF
server: { listen: "127.0.0.1:0" }
admin: { enabled: false }
egress: { allow: ["127.0.0.0/8"] }
storage: $storage
sources:
  app: { path: /in, verify: { scheme: none } }
destinations:
  sink: { url: "http://$SINK_ADDR/sink", sign: { scheme: none } }
routes:
  - { name: all, source: app, to: [sink] }
EOF
}

# start_hookyard MODE ROUND: sets SUT_PID, SUT_DIR, URL.
start_hookyard() {
  local mode=$1 round=$2 addr
  SUT_DIR="$WORK/$mode-r$round"
  mkdir -p "$SUT_DIR"
  write_config "$mode" "$SUT_DIR/hookyard.yaml"
  (cd "$SUT_DIR" && HOOKYARD_WORKER_THREADS=$WORKER_THREADS RUST_LOG=warn NO_COLOR=1 exec taskset -c "$SUT_CPU" \
    "$HOOKYARD" run --config "$SUT_DIR/hookyard.yaml" >"$SUT_DIR/hookyard.out" 2>"$SUT_DIR/hookyard.err") &
  SUT_PID=$!
  track "$SUT_PID"
  addr=$(listen_addr "$SUT_DIR/hookyard.out" "$SUT_PID" "hookyard run ($mode)")
  URL="http://$addr/in"
}

# sanity: one POST must be answered 202 and reach the sink.
sanity() {
  local mode=$1 before code
  before=$(sink_count)
  code=$(curl -s -o "$WORK/last_response" -w '%{http_code}' --max-time 5 -X POST \
    --data-binary "@$BODY_FILE" -H 'Content-Type: application/json' "$URL" || echo 000)
  [[ "$code" == 202 ]] || die "$mode: POST $URL answered $code: $(head -c 300 "$WORK/last_response")"
  drain $((before + 1))
  ((DRAIN_TIMEOUT == 0)) || die "$mode: the sink did not get the sanity event within ${DRAIN_MAX} s"
}

# measure ROUND MODE: warm-up, one measured wrk run, drain; appends a row.
measure() {
  local round=$1 mode=$2 out c0 cpu0 cpu1 acc store warns kv
  start_hookyard "$mode" "$round"
  sanity "$mode"
  if ((WARMUP_S > 0)); then
    c0=$(sink_count)
    dur_wrk "$WARMUP_S" "$SUT_DIR/wrk-warmup.txt"
    drain $((c0 + $(wrk_accepted "$SUT_DIR/wrk-warmup.txt")))
  fi
  out="$SUT_DIR/wrk.txt"
  c0=$(sink_count)
  cpu0=$(cpu_ticks "$SUT_PID")
  dur_wrk "$DURATION_S" "$out"
  cpu1=$(cpu_ticks "$SUT_PID")
  acc=$(wrk_accepted "$out")
  drain $((c0 + acc))
  kill -0 "$SINK_PID" 2>/dev/null || die "sink died"
  kill -0 "$SUT_PID" 2>/dev/null || die "hookyard ($mode) died; log: $SUT_DIR/hookyard.err"
  store=$(store_bytes "$SUT_DIR")
  stop_pid "$SUT_PID" "hookyard ($mode)"
  warns=$(grep -cv '^[[:space:]]*$' "$SUT_DIR/hookyard.err" || true)
  rm -f "$SUT_DIR"/hookyard.db* # can be hundreds of MB per run; keep configs, logs, wrk output
  kv=$(sed -n 's/^DUR_RESULT //p' "$out")
  # round mode sink_delta drain_ms drain_timeout sut_ticks store_bytes log_warn kv
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$mode" $((DRAIN_COUNT - c0)) "$DRAIN_MS" \
    "$DRAIN_TIMEOUT" $((cpu1 - cpu0)) "$store" "${warns:-0}" "$kv" >>"$ROWS"
  python3 "$HERE/report.py" row "$CLK_TCK" "$(tail -n 1 "$ROWS")" >&2
}

# -------------------------------------------------------------------- main
log "rounds=$ROUNDS duration=${DURATION_S}s warmup=${WARMUP_S}s connections=$CONNECTIONS modes=[$MODES]" \
  "cpus: load=$LOAD_CPU hookyard=$SUT_CPU ($WORKER_THREADS threads) store: $WORK ($STORE_FS)"
start_sink
for ((r = 1; r <= ROUNDS; r++)); do
  for m in $MODES; do
    log "round $r/$ROUNDS: $m"
    measure "$r" "$m"
  done
done
stop_pid "$SINK_PID" sink

JSON="$RESULTS_DIR/durability-$TS.json"
META=(
  "timestamp=$TS" "rounds=$ROUNDS" "duration_s=$DURATION_S" "warmup_s=$WARMUP_S"
  "connections=$CONNECTIONS" "worker_threads=$WORKER_THREADS" "load_cpu=$LOAD_CPU" "sut_cpu=$SUT_CPU"
  "clk_tck=$CLK_TCK" "body_bytes=$BODY_BYTES" "store_fs=$STORE_FS"
  "hookyard=$HOOKYARD"
)
mapfile -t -O "${#META[@]}" META < <(run_meta)
python3 "$HERE/report.py" summary "$ROWS" "$JSON" "${META[@]}"
log "results written to ${JSON#"$ROOT"/}"
