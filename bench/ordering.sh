#!/usr/bin/env bash
# Ordering and batching benchmark: how fast one destination drains a backlog with
# `ordering: { key: "$.key" }` (per key, one delivery in flight at a time, in accept order) and
# with `batch: { max_events: 100, max_wait: 1s }` (one request carries up to 100 events, a JSON
# array) against the same destination with neither, in one run with the rounds interleaved
# (unordered, ordered, batched, unordered, ...) so that drift of the machine hits every mode
# alike. Same machine, same binary, same sink.
#
#   bench/ordering.sh                            # 20,000 events over 100 keys, 3 rounds per mode
#   EVENTS=5000 ROUNDS=2 bench/ordering.sh       # quick look
#   MODES="unordered ordered batched" bench/ordering.sh
#
# Each run: a fresh `hookyard run` (fresh SQLite store, default sync) with one unsigned source and
# one route to one destination, `hookyard receive --quiet` (the sink); the destination is paused
# (admin API), wrk posts exactly EVENTS events (bench/ordering/post_keyed.lua: keys round-robin
# over KEYS, `{"key":"k042","seq":N,"pad":"..."}`), the script checks that every one was answered
# 202, that the store holds them all as pending and that the sink got none; then it resumes the
# destination (admin API) and waits until the sink's request counter has stopped growing and the
# gateway has counted every event delivered (hookyard_deliveries_total{destination="sink",
# outcome="delivered"} at the admin listener's /metrics, one per event, also for an event that
# went in a batch: `hookyard receive` counts requests, and a batch is one request). deliveries/s =
# events delivered (that metric) / (time from the resume to the sink's last request), the same
# measure in every mode; the gateway's CPU (utime+stime from /proc) over the same time, per
# delivered event; the sink's requests are reported beside it. Afterwards (not timed) the script
# waits for the store's pending count of the destination to reach 0. So this measures the backlog
# path (due deliveries read from the store, settled back to it), where ordering does its work
# (which deliveries are heads of their key, advancing a key when its head settles) and batching
# its own (forming batches in the store, settling each batch onto its members). Every mode gets
# the same destination max_in_flight (DEST_IN_FLIGHT), so with KEYS >= DEST_IN_FLIGHT ordering
# costs nothing in parallelism and any gap is the ordering's own cost. The targets: ordered at
# least 0.8x unordered deliveries/s, batched at least 5x (paired medians over the rounds).
#
# The gateway runs on SUT_CPU, wrk and the sink (and this script) on LOAD_CPU (taskset), the
# gateway with HOOKYARD_WORKER_THREADS worker threads and RUST_LOG=warn. Loopback only.
#
# Parameters (environment):
#   EVENTS=20000  KEYS=100  ROUNDS=3  MODES="unordered ordered" (any of unordered ordered batched)
#   CONNECTIONS=32 (wrk, posting)  PAD_BYTES=200 (padding in each body)
#   DEST_IN_FLIGHT=32 (the destination's max_in_flight)  BATCH_MAX_EVENTS=100  BATCH_MAX_WAIT=1s
#   HOOKYARD_WORKER_THREADS=2  LOAD_CPU=0  SUT_CPU=1  STORAGE_SYNC= (hookyard's default, full)
#   HOOKYARD=target/release/hookyard (built with `cargo build --release` when missing or older than
#   src/; a path outside target/ is used as it is)  WORK_PARENT=target  DRAIN_MAX=300 (s)
#   DRAIN_STABLE_MS=300  POST_MAX=300 (s, bound of the wrk run)  MAX_PENDING=10000000
#   RESULTS_DIR=bench/results  KEEP_WORKDIR=0
#
# Prints a table and writes bench/results/ordering-<UTC timestamp>.json (ignored by git;
# bench/ordering/report.py). Its files (wrk script, report) are in bench/ordering/; the helpers it
# shares with the other scripts in bench/lib.sh.
set -euo pipefail
export LC_ALL=C

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
HERE="$BENCH_DIR/ordering"
BENCH_NAME=ordering
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

# ---------------------------------------------------------------- parameters
EVENTS=${EVENTS:-20000}
KEYS=${KEYS:-100}
ROUNDS=${ROUNDS:-3}
MODES=${MODES:-"unordered ordered"}
CONNECTIONS=${CONNECTIONS:-32}
PAD_BYTES=${PAD_BYTES:-200}
DEST_IN_FLIGHT=${DEST_IN_FLIGHT:-32}
BATCH_MAX_EVENTS=${BATCH_MAX_EVENTS:-100}
BATCH_MAX_WAIT=${BATCH_MAX_WAIT:-1s}
WORKER_THREADS=${HOOKYARD_WORKER_THREADS:-2}
LOAD_CPU=${LOAD_CPU:-0}
SUT_CPU=${SUT_CPU:-1}
STORAGE_SYNC=${STORAGE_SYNC:-}
HOOKYARD=${HOOKYARD:-target/release/hookyard}
WORK_PARENT=${WORK_PARENT:-$ROOT/target}
DRAIN_MAX=${DRAIN_MAX:-300}
DRAIN_STABLE_MS=${DRAIN_STABLE_MS:-300}
POST_MAX=${POST_MAX:-300}
MAX_PENDING=${MAX_PENDING:-10000000}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
WRK_THREADS=1 # post_keyed.lua counts the events of one thread
LUA="$HERE/post_keyed.lua"
REPORT="$HERE/report.py"
ADMIN_TOKEN=bench-ordering-admin-token # loopback only; set so that no "admin API has no token" warning

case "$HOOKYARD" in /*) ;; *) HOOKYARD="$ROOT/$HOOKYARD" ;; esac
for v in EVENTS KEYS ROUNDS CONNECTIONS DEST_IN_FLIGHT BATCH_MAX_EVENTS WORKER_THREADS DRAIN_MAX DRAIN_STABLE_MS \
  POST_MAX MAX_PENDING; do
  positive_int "$v" "${!v}"
done
[[ "$PAD_BYTES" =~ ^[0-9]+$ ]] || die "PAD_BYTES must be a number (got '$PAD_BYTES')"
((KEYS <= 1000)) || die "KEYS must be at most 1000 (keys are k000 .. k999)"
[[ -z "$STORAGE_SYNC" || "$STORAGE_SYNC" == full || "$STORAGE_SYNC" == normal ]] \
  || die "STORAGE_SYNC must be full or normal (got '$STORAGE_SYNC')"
[[ "$BATCH_MAX_WAIT" =~ ^[0-9]+(ms|s|m)$ ]] \
  || die "BATCH_MAX_WAIT must be a duration like 1s or 500ms (got '$BATCH_MAX_WAIT')"
[[ -n "${MODES// /}" ]] || die "MODES is empty"
for m in $MODES; do
  [[ "$m" == unordered || "$m" == ordered || "$m" == batched ]] || die "unknown mode '$m' (unordered, ordered, batched)"
done

# ------------------------------------------------------------- dependencies
mapfile -t missing < <(missing_tools)
if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
for t in wrk curl python3 taskset; do command -v "$t" >/dev/null || die "$t not found"; done
ensure_built "$HOOKYARD"
[[ -f "$LUA" && -f "$REPORT" ]] || die "$LUA or $REPORT missing"

pin_cpus
CLK_TCK=$(getconf CLK_TCK)

mkdir -p "$WORK_PARENT" "$RESULTS_DIR"
WORK=$(mktemp -d "$WORK_PARENT/hookyard-ordering.XXXXXX")
TS=$(date -u +%Y%m%dT%H%M%SZ)
ROWS="$WORK/rows.txt"
: >"$ROWS"

# --------------------------------------------------------------- accounting
# busy_ticks: prints the ticks all CPUs spent busy (user nice system irq softirq; /proc/stat).
busy_ticks() {
  local line f
  read -r line </proc/stat
  read -ra f <<<"$line"
  echo $((f[1] + f[2] + f[3] + f[6] + f[7]))
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

# write_config FILE MODE: one unsigned source, one route to the sink; `ordering` when MODE is
# ordered, `batch` when it is batched. The store is hookyard.db beside FILE.
write_config() {
  local ordering="" storage="storage: { path: hookyard.db }"
  [[ "$2" == ordered ]] && ordering='    ordering: { key: "$.key" }'
  [[ "$2" == batched ]] && ordering="    batch: { max_events: $BATCH_MAX_EVENTS, max_wait: $BATCH_MAX_WAIT }"
  [[ -n "$STORAGE_SYNC" ]] && storage="storage: { path: hookyard.db, sync: $STORAGE_SYNC }"
  cat >"$1" <<EOF
server: { listen: "127.0.0.1:0" }
admin: { enabled: true, listen: "127.0.0.1:0", token: "$ADMIN_TOKEN" }
egress: { allow: ["127.0.0.0/8"] }
delivery: { max_pending: $MAX_PENDING }
$storage
sources:
  app: { path: /in, verify: { scheme: none } }
destinations:
  sink:
    url: "http://$SINK_ADDR/sink"
    sign: { scheme: none }
    max_in_flight: $DEST_IN_FLIGHT
$ordering
routes:
  - { name: all, source: app, to: [sink] }
EOF
}

# admin_addr OUTFILE PID: waits (15 s) for the "admin listening on ADDR" line; prints ADDR.
admin_addr() {
  local out=$1 pid=$2 i addr
  for ((i = 0; i < 150; i++)); do
    addr=$(sed -n 's/^admin listening on //p' "$out" 2>/dev/null | head -n 1)
    if [[ -n "$addr" ]]; then
      echo "$addr"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || die "hookyard run exited before its admin listener was up"
    sleep 0.1
  done
  die "hookyard run printed no 'admin listening on' line within 15 s"
}

# admin_get ADMIN PATH: GET on the admin API (prints the body; fails on non-2xx).
admin_get() { curl -sf --max-time 5 -H "Authorization: Bearer $ADMIN_TOKEN" "http://$1$2"; }

# admin_post ADMIN PATH BODY: POST on the admin API; dies on non-2xx.
admin_post() {
  curl -sf --max-time 10 -X POST -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
    --data "$3" "http://$1$2" >/dev/null || die "admin POST $2 failed"
}

# delivered_events ADMIN: sets DRAIN_EVENTS and DRAIN_OTHER to the gateway's
# hookyard_deliveries_total{destination="sink"} with outcome delivered, and with any other outcome
# (retry, failed, dead, gone), from /metrics: one per event, also for an event sent in a batch.
delivered_events() {
  local kv
  kv=$(admin_get "$1" /metrics | python3 "$REPORT" outcomes sink) || die "GET /metrics failed"
  DRAIN_EVENTS=$(sed -n 's/.*\bdelivered=\([0-9]*\).*/\1/p' <<<"$kv")
  DRAIN_OTHER=$(sed -n 's/.*\bother=\([0-9]*\).*/\1/p' <<<"$kv")
  [[ -n "$DRAIN_EVENTS" && -n "$DRAIN_OTHER" ]] || die "cannot read the delivered events from /metrics: $kv"
}

# drain_events ADMIN WANT_REQUESTS WANT_EVENTS PID: polls the sink (as lib.sh's drain does) until
# it has received at least WANT_REQUESTS requests and its counter has not grown for
# DRAIN_STABLE_MS; then reads the CPU ticks of the gateway (PID), the sink and the machine
# (END_HY, END_SINK, END_BUSY) and asks the gateway (delivered_events) whether WANT_EVENTS events
# were delivered. If not, it polls on (the gateway's /metrics again only once the sink has been
# still for another DRAIN_STABLE_MS), until DRAIN_MAX s have passed since the call. Sets
# DRAIN_COUNT (the sink's final count), DRAIN_EVENTS, DRAIN_OTHER, DRAIN_AT_US (when the sink's
# final count was first seen) and DRAIN_TIMEOUT (1 if cut short). A request count alone is not an
# event count (a batch is one request); the gateway counts an event once its request has been
# answered, so the sink sees the last request first, and polling the sink (on LOAD_CPU) rather
# than the gateway's /metrics (a store read on SUT_CPU each time) keeps the poll off the gateway.
# So the end is the sink's last request, once the gateway has counted every event delivered.
drain_events() {
  local admin=$1 want_req=$2 want_ev=$3 pid=$4 c last deadline checked_at=-1
  now_us
  DRAIN_AT_US=$NOW_US deadline=$((NOW_US + DRAIN_MAX * 1000000))
  last=$(sink_count)
  DRAIN_TIMEOUT=0
  while :; do
    now_us
    if ((last >= want_req && NOW_US - DRAIN_AT_US >= DRAIN_STABLE_MS * 1000 \
      && (checked_at < DRAIN_AT_US || NOW_US - checked_at >= DRAIN_STABLE_MS * 1000))) \
      || ((NOW_US >= deadline)); then
      ((NOW_US >= deadline)) && DRAIN_TIMEOUT=1
      END_HY=$(cpu_ticks "$pid") END_SINK=$(cpu_ticks "$SINK_PID") END_BUSY=$(busy_ticks)
      delivered_events "$admin"
      ((DRAIN_EVENTS >= want_ev || DRAIN_TIMEOUT)) && break
      now_us
      checked_at=$NOW_US
    fi
    sleep 0.05
    c=$(sink_count)
    if ((c != last)); then
      last=$c
      now_us
      DRAIN_AT_US=$NOW_US
    fi
  done
  DRAIN_COUNT=$last
}

# settled ADMIN: waits (up to 30 s) until the store has no pending delivery for the sink; prints
# the pending count it last saw. Not timed: the deliveries' settles trail the sink's last request.
settled() {
  local i p
  for ((i = 0; i < 300; i++)); do
    p=$(admin_get "$1" /api/v1/destinations | python3 "$REPORT" pending sink) || die "GET /api/v1/destinations failed"
    ((p == 0)) && break
    sleep 0.1
  done
  echo "$p"
}

# measure ROUND MODE: one run (start, pause, post, resume, drain, stop); appends a row.
measure() {
  local round=$1 mode=$2 dir pid addr admin out c0 c1 pending hy0 hy1 hy2 sink0 busy0 t0
  local kv posts answered accepted warn want_req pending_after
  dir="$WORK/$mode-r$round"
  mkdir -p "$dir"
  write_config "$dir/hookyard.yaml" "$mode"
  (cd "$dir" && HOOKYARD_WORKER_THREADS=$WORKER_THREADS RUST_LOG=warn NO_COLOR=1 exec taskset -c "$SUT_CPU" \
    "$HOOKYARD" run --config "$dir/hookyard.yaml" >"$dir/hookyard.out" 2>"$dir/hookyard.err") &
  pid=$!
  track "$pid"
  addr=$(listen_addr "$dir/hookyard.out" "$pid" "hookyard run ($mode)")
  admin=$(admin_addr "$dir/hookyard.out" "$pid")
  admin_post "$admin" /api/v1/destinations/sink/pause '{"reason":"bench/ordering.sh: queueing the backlog"}'

  # queue the backlog
  c0=$(sink_count)
  hy0=$(cpu_ticks "$pid")
  out="$dir/wrk.txt"
  run_wrk "http://$addr/in" "$POST_MAX" "$out" "$LUA" ORD_RESULT "$EVENTS" "$KEYS" "$PAD_BYTES"
  hy1=$(cpu_ticks "$pid")
  kv=$(sed -n 's/^ORD_RESULT //p' "$out")
  posts=$(sed -n 's/.*\bposts=\([0-9]*\).*/\1/p' <<<"$kv")
  answered=$(sed -n 's/.*\banswered=\([0-9]*\).*/\1/p' <<<"$kv")
  accepted=$(sed -n 's/.*\baccepted=\([0-9]*\).*/\1/p' <<<"$kv")
  ((posts == EVENTS && answered == EVENTS)) || die "wrk posted $posts and had $answered answers, not $EVENTS: $kv"
  ((accepted == EVENTS)) || log "WARNING: only $accepted of $EVENTS posts were answered 202 ($mode, round $round)"
  pending=$(admin_get "$admin" /api/v1/destinations | python3 "$REPORT" pending sink) \
    || die "GET /api/v1/destinations failed"
  c1=$(sink_count)
  ((c1 == c0)) || die "the sink got $((c1 - c0)) requests while the destination was paused"
  delivered_events "$admin"
  ((DRAIN_EVENTS == 0 && DRAIN_OTHER == 0)) \
    || die "the gateway counts $DRAIN_EVENTS deliveries ($DRAIN_OTHER other outcomes) while the destination was paused"
  # the sink's requests to wait for: one per event, or (batched) at least one per full batch
  want_req=$accepted
  [[ "$mode" == batched ]] && want_req=$(((accepted + BATCH_MAX_EVENTS - 1) / BATCH_MAX_EVENTS))

  # drain it
  sink0=$(cpu_ticks "$SINK_PID")
  busy0=$(busy_ticks)
  hy2=$(cpu_ticks "$pid")
  now_us
  t0=$NOW_US
  admin_post "$admin" /api/v1/destinations/sink/resume '{"reason":"bench/ordering.sh: drain"}'
  drain_events "$admin" $((c0 + want_req)) "$accepted" "$pid"
  kill -0 "$SINK_PID" 2>/dev/null || die "sink died"
  kill -0 "$pid" 2>/dev/null || die "hookyard run ($mode) died; log: $dir/hookyard.err"
  pending_after=$(settled "$admin")
  stop_pid "$pid" "hookyard run ($mode)"
  warn=$(grep -cv '^[[:space:]]*$' "$dir/hookyard.err" || true)
  echo "round=$round mode=$mode events=$EVENTS keys=$KEYS pending=$pending sink_delta=$((DRAIN_COUNT - c0))" \
    "delivered=$DRAIN_EVENTS other_outcomes=$DRAIN_OTHER pending_after=$pending_after" \
    "drain_us=$((DRAIN_AT_US - t0)) drain_timeout=$DRAIN_TIMEOUT hy_ticks_post=$((hy1 - hy0))" \
    "hy_ticks_drain=$((END_HY - hy2)) sink_ticks_drain=$((END_SINK - sink0)) busy_ticks_drain=$((END_BUSY - busy0))" \
    "log_warn=$warn $kv" >>"$ROWS"
  python3 "$REPORT" row "$CLK_TCK" "$(tail -n 1 "$ROWS")" >&2
}

# -------------------------------------------------------------------- main
log "events=$EVENTS keys=$KEYS rounds=$ROUNDS modes=[$MODES] destination max_in_flight=$DEST_IN_FLIGHT" \
  "batch: max_events $BATCH_MAX_EVENTS, max_wait $BATCH_MAX_WAIT" \
  "cpus: load=$LOAD_CPU gateway=$SUT_CPU ($WORKER_THREADS worker threads)"
start_sink
for m in $MODES; do
  write_config "$WORK/check-$m.yaml" "$m"
  "$HOOKYARD" check --config "$WORK/check-$m.yaml" >"$WORK/check-$m.out" 2>&1 \
    || { cat "$WORK/check-$m.out" >&2; die "hookyard check refused the generated $m config"; }
done
for ((r = 1; r <= ROUNDS; r++)); do
  for m in $MODES; do
    log "round $r/$ROUNDS: $m"
    measure "$r" "$m"
  done
done
stop_pid "$SINK_PID" sink

JSON="$RESULTS_DIR/ordering-$TS.json"
META=(
  "timestamp=$TS" "events=$EVENTS" "keys=$KEYS" "rounds=$ROUNDS" "connections=$CONNECTIONS"
  "pad_bytes=$PAD_BYTES" "dest_in_flight=$DEST_IN_FLIGHT" "batch_max_events=$BATCH_MAX_EVENTS"
  "batch_max_wait=$BATCH_MAX_WAIT" "worker_threads=$WORKER_THREADS"
  "load_cpu=$LOAD_CPU" "sut_cpu=$SUT_CPU" "clk_tck=$CLK_TCK" "storage_sync=${STORAGE_SYNC:-default}"
  "max_pending=$MAX_PENDING" "drain_max_s=$DRAIN_MAX" "hookyard=$HOOKYARD"
)
mapfile -t -O "${#META[@]}" META < <(run_meta)
python3 "$REPORT" summary "$ROWS" "$JSON" "${META[@]}"
log "results written to ${JSON#"$ROOT"/}"
