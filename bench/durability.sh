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
set -euo pipefail
export LC_ALL=C

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
HERE="$BENCH_DIR/durability"

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

log() { printf '[durability %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

case "$HOOKYARD" in /*) ;; *) HOOKYARD="$ROOT/$HOOKYARD" ;; esac
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
[[ "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer"
[[ "$WORKER_THREADS" =~ ^[1-9][0-9]*$ ]] || die "HOOKYARD_WORKER_THREADS must be a positive integer"
for m in $MODES; do
  case "$m" in full | normal | memory) ;; *) die "unknown mode '$m' (full, normal, memory)" ;; esac
done

# "10s" / "1m" / "500ms" / "2" -> whole seconds (rounded up).
dur_secs() {
  local d=$1
  case "$d" in
    *ms) echo $(((${d%ms} + 999) / 1000)) ;;
    *s) echo "${d%s}" ;;
    *m) echo $((${d%m} * 60)) ;;
    *) echo "$d" ;;
  esac
}
DURATION_S=$(dur_secs "$DURATION")
WARMUP_S=$(dur_secs "$WARMUP")
[[ "$DURATION_S" =~ ^[0-9]+$ && "$DURATION_S" -ge 1 ]] || die "DURATION must be like 10s or 1m"
[[ "$WARMUP_S" =~ ^[0-9]+$ ]] || die "WARMUP must be like 1s or 0"

# ---------------------------------------------------------- process tracking
WORK=""
PIDS=()

untrack() {
  local kept=() p
  for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || kept+=("$p"); done
  PIDS=("${kept[@]+"${kept[@]}"}")
}

# stop_pid PID NAME: SIGTERM, up to 5 s grace, then SIGKILL; reaps the child.
stop_pid() {
  local pid=$1 name=${2:-process} i
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      [[ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" == Z ]] && break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null && [[ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]]; then
      log "WARNING: $name (pid $pid) still running 5 s after SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  untrack "$pid"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}" "pid ${PIDS[i]}"; done
  if [[ -n "$WORK" && -d "$WORK" ]]; then
    if [[ $rc -eq 0 && "$KEEP_WORKDIR" != 1 ]]; then
      rm -rf "$WORK"
    else
      log "work dir (configs, logs, wrk output) kept: $WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------- dependencies
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
command -v taskset >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
  [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null \
    || die "missing ${missing[*]}; install them (apt-get install ${missing[*]})"
  log "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for t in wrk curl python3 taskset; do command -v "$t" >/dev/null || die "$t not found"; done

if [[ "$HOOKYARD" == "$ROOT/target/release/hookyard" ]]; then
  newer=""
  [[ -x "$HOOKYARD" ]] && newer=$(find "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$HOOKYARD" -print -quit)
  if [[ ! -x "$HOOKYARD" || -n "$newer" ]]; then
    log "building hookyard (cargo build --release)${newer:+: $newer is newer than the binary}"
    (cd "$ROOT" && cargo build --release) || die "cargo build --release failed"
  fi
fi
[[ -x "$HOOKYARD" ]] || die "hookyard binary not found at $HOOKYARD"
[[ -f "$BODY_FILE" && -f "$LUA" ]] || die "$BODY_FILE or $LUA missing"

if (($(nproc) < 2)); then
  log "WARNING: only $(nproc) CPU; load and hookyard share CPU 0"
  LOAD_CPU=0 SUT_CPU=0
fi
CLK_TCK=$(getconf CLK_TCK)
# Keep this script and what it spawns (curl, sed, ...) off hookyard's CPU.
taskset -cp "$LOAD_CPU" $$ >/dev/null

mkdir -p "$WORK_PARENT" "$RESULTS_DIR"
WORK=$(mktemp -d "$WORK_PARENT/hookyard-durability.XXXXXX")
STORE_FS=$(stat -f -c %T "$WORK")
[[ "$STORE_FS" == tmpfs || "$STORE_FS" == ramfs ]] \
  && die "$WORK is on $STORE_FS: fsync costs nothing there; set WORK_PARENT to a directory on disk"
TS=$(date -u +%Y%m%dT%H%M%SZ)
ROWS="$WORK/rows.tsv"
BODY_BYTES=$(wc -c <"$BODY_FILE")

# ------------------------------------------------------------------ helpers
now_us() { local t=$EPOCHREALTIME; NOW_US=$((10#${t/./})); }

# listen_addr OUTFILE PID NAME: waits (15 s) for "listening on ADDR"; prints ADDR.
listen_addr() {
  local out=$1 pid=$2 name=$3 i addr
  for ((i = 0; i < 150; i++)); do
    addr=$(sed -n 's/^listening on //p' "$out" 2>/dev/null | head -n 1)
    if [[ -n "$addr" ]]; then
      echo "$addr"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "${out%.out}.err" >&2 || true; die "$name exited before listening"; }
    sleep 0.1
  done
  tail -n 20 "${out%.out}.err" >&2 || true
  die "$name did not print 'listening on' within 15 s"
}

sink_count() {
  local json n
  json=$(curl -sf --max-time 2 "http://$SINK_ADDR/stats") || die "sink /stats failed"
  n=$(sed -n 's/.*"received"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p' <<<"$json")
  [[ -n "$n" ]] || die "sink /stats has no \"received\" counter: $json"
  echo "$n"
}

# cpu_ticks PID: utime+stime in clock ticks.
cpu_ticks() {
  local stat rest f
  stat=$(<"/proc/$1/stat") || die "process $1 is gone"
  rest=${stat##*) }
  read -ra f <<<"$rest"
  echo $((f[11] + f[12]))
}

# store_bytes DIR: size of the database, its WAL and shared memory (0 for :memory:).
store_bytes() {
  local total=0 f
  for f in "$1"/hookyard.db "$1"/hookyard.db-wal "$1"/hookyard.db-shm; do
    [[ -f "$f" ]] && total=$((total + $(stat -c %s "$f")))
  done
  echo "$total"
}

# drain WANT: waits until the sink has received at least WANT in all and has
# not grown for DRAIN_STABLE_MS (at most DRAIN_MAX s). Sets DRAIN_MS (from the
# call to the last growth) and DRAIN_TIMEOUT.
drain() {
  local want=$1 c last start deadline changed
  now_us
  start=$NOW_US changed=$NOW_US deadline=$((NOW_US + DRAIN_MAX * 1000000))
  last=$(sink_count)
  DRAIN_TIMEOUT=0
  while :; do
    now_us
    if ((last >= want && NOW_US - changed >= DRAIN_STABLE_MS * 1000)); then break; fi
    if ((NOW_US >= deadline)); then DRAIN_TIMEOUT=1; break; fi
    sleep 0.05
    c=$(sink_count)
    if ((c != last)); then
      last=$c
      now_us
      changed=$NOW_US
    fi
  done
  DRAIN_MS=$(((changed - start) / 1000))
  DRAIN_COUNT=$last
}

# run_wrk SECONDS OUTFILE: one wrk run on LOAD_CPU against $URL (bounded).
run_wrk() {
  local secs=$1 out=$2 pid rc=0
  timeout --kill-after=5 $((secs + 30)) \
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${secs}s" --timeout 5s \
    -s "$LUA" "$URL" -- "$BODY_FILE" >"$out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait "$pid" || rc=$?
  untrack "$pid"
  if ((rc != 0)) || ! grep -q '^DUR_RESULT ' "$out"; then
    cat "$out" >&2
    die "wrk failed (exit $rc) against $URL"
  fi
}

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
  PIDS+=("$SINK_PID")
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
  PIDS+=("$SUT_PID")
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
    run_wrk "$WARMUP_S" "$SUT_DIR/wrk-warmup.txt"
    drain $((c0 + $(wrk_accepted "$SUT_DIR/wrk-warmup.txt")))
  fi
  out="$SUT_DIR/wrk.txt"
  c0=$(sink_count)
  cpu0=$(cpu_ticks "$SUT_PID")
  run_wrk "$DURATION_S" "$out"
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
  "git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || true)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo '-dirty')"
  "wrk_version=$(wrk -v 2>&1 | head -n 1 | cut -d' ' -f2)"
  "kernel=$(uname -r)"
  "cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
  "nproc=$(nproc)"
)
python3 "$HERE/report.py" summary "$ROWS" "$JSON" "${META[@]}"
log "results written to ${JSON#"$ROOT"/}"
