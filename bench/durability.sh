#!/usr/bin/env bash
# Durability benchmark: what acknowledging only after a durable commit costs.
# Accepted events/s and ingress latency of `hookyard run` with
#   full    storage.sync: full    (fsync per group commit; the default)
#   normal  storage.sync: normal  (WAL, no fsync per commit)
#   pg      storage.postgres at PG_URL (the server's own synchronous_commit,
#           by default on: the commit waits for the WAL flush)
#   memory  storage.path: ":memory:" (the same code path, no disk; the baseline)
# in one run, rounds interleaved (full, normal, pg, full, ...) so that drift
# of the machine hits every mode alike.
#
#   bench/durability.sh                          # 3 rounds x 10 s, 64 connections
#   ROUNDS=1 DURATION=5s bench/durability.sh     # quick look
#   MODES="full pg" PG_URL=postgres://u@db:5432/x bench/durability.sh
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
# sink has every accepted event; delivered/s = events the sink received from
# wrk's start until its counter stopped, over that time. Deliveries trail
# accepts (wrk and the sink share LOAD_CPU), so the backlog grows during a run:
# the configs raise delivery.max_pending (default 100000) to MAX_PENDING, or a
# run would end in 503s "delivery queue full" that cut accepted/s and bill
# their CPU to the accepted events. CPU per event =
# utime+stime during the wrk run / accepted events; "drain us/ev" counts until
# the sink had every event, so it includes the deliveries (and their settles in
# the store) still queued when wrk stopped. Prints a table and writes
# bench/results/durability-<UTC timestamp>.json (ignored by git).
#
# pg: each run gets a fresh schema bench_<timestamp>_r<round> (hookyard creates
# it) and application_name hookyard-<schema>; the schema is dropped (DROP
# SCHEMA ... CASCADE) once that run's hookyard has stopped, and on any exit.
# With PostgreSQL the store is another process, so its CPU counts too: the
# "pg" CPU of a run is that of the whole server, the postmaster and all its
# children (every backend, walwriter, checkpointer, ...: the WAL flush and
# write-back an accept causes are the server's work, not only the backend's),
# summed from /proc/PID/stat utime+stime before and after the wrk run, plus the
# postmaster's cutime+cstime for children that exited in between. So the server
# must run on this machine and should serve nobody else during the run: the
# JSON also has the CPU of just the backends with hookyard's application_name
# (pg_backend_ticks), and for the SQLite modes the server's CPU while idle
# (pg_ticks), to see whether anything else used it. PostgreSQL is not pinned:
# it runs wherever the kernel puts it, on LOAD_CPU or SUT_CPU. The store's
# size is the schema's tables with indexes and TOAST; the JSON also has the
# WAL the server wrote, the transactions of the database (reads included) and
# the server's WAL flushes (about one per write commit) from the start of the
# wrk run until hookyard stopped (pg_wal_bytes, pg_commits, pg_wal_syncs).
#
# Parameters (environment):
#   ROUNDS=3  DURATION=10s  CONNECTIONS=64  WARMUP=1s (0 = none)
#   MODES="full normal pg" (any of full normal pg memory)
#   HOOKYARD_WORKER_THREADS=2  LOAD_CPU=0  SUT_CPU=1
#   HOOKYARD=target/release/hookyard (built with `cargo build --release` when
#   missing or older than src/)  WORK_PARENT=target  DRAIN_MAX=120 (s)
#   MAX_PENDING=10000000 (the configs' delivery.max_pending, see below)
#   RESULTS_DIR=bench/results  KEEP_WORKDIR=0
#   PG_URL=postgres://postgres@127.0.0.1:5432/test (also used by psql; a
#   superuser is not needed, CREATE on the database is)  PG_POOL=16
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
MODES=${MODES:-"full normal pg"}
WORKER_THREADS=${HOOKYARD_WORKER_THREADS:-2}
LOAD_CPU=${LOAD_CPU:-0}
SUT_CPU=${SUT_CPU:-1}
HOOKYARD=${HOOKYARD:-target/release/hookyard}
WORK_PARENT=${WORK_PARENT:-$ROOT/target}
DRAIN_MAX=${DRAIN_MAX:-120}            # s: longest wait for the sink after wrk stops
MAX_PENDING=${MAX_PENDING:-10000000}   # delivery.max_pending of the generated configs
DRAIN_STABLE_MS=${DRAIN_STABLE_MS:-300} # ms without sink growth, once all are in, that ends a drain
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/test}
PG_POOL=${PG_POOL:-16}
BODY_FILE="$HERE/event.json"
LUA="$HERE/post_event.lua"

case "$HOOKYARD" in /*) ;; *) HOOKYARD="$ROOT/$HOOKYARD" ;; esac
positive_int ROUNDS "$ROUNDS"
positive_int CONNECTIONS "$CONNECTIONS"
positive_int HOOKYARD_WORKER_THREADS "$WORKER_THREADS"
positive_int PG_POOL "$PG_POOL"
positive_int MAX_PENDING "$MAX_PENDING"
[[ -n "${MODES// /}" ]] || die "MODES is empty"
USE_PG=0
for m in $MODES; do
  case "$m" in
    full | normal | memory) ;;
    pg) USE_PG=1 ;;
    *) die "unknown mode '$m' (full, normal, pg, memory)" ;;
  esac
done

DURATION_S=$(dur_secs "$DURATION")
WARMUP_S=$(dur_secs "$WARMUP")
[[ "$DURATION_S" =~ ^[0-9]+$ && "$DURATION_S" -ge 1 ]] || die "DURATION must be like 10s or 1m"
[[ "$WARMUP_S" =~ ^[0-9]+$ ]] || die "WARMUP must be like 1s or 0"

# ------------------------------------------------------------- dependencies
mapfile -t missing < <(missing_tools)
if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
for t in wrk curl python3 taskset; do command -v "$t" >/dev/null || die "$t not found"; done
if ((USE_PG)) && ! command -v psql >/dev/null; then apt_install postgresql-client; fi

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

# ---------------------------------------------------------------- PostgreSQL
PG_SCHEMAS=()   # schemas this run created and has not dropped yet
PG_POSTMASTER="" # pid of the server's postmaster (pg_setup)

# pg_counters: "LSN XACTS WAL_SYNCS": the server's WAL position, the transactions committed in
# this database (read-only ones too: every statement outside a transaction is one) and the WAL
# flushes of the server, about one per committed write (cumulative statistics: a backend reports
# its own at the latest when it exits).
pg_counters() {
  pg_sql "SELECT pg_current_wal_lsn(), (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
          (SELECT wal_sync FROM pg_stat_wal)" | tr '|' ' '
}

# pg_wait_gone APP: waits (at most 5 s) until no backend with application_name APP is left, so
# that their statistics are in.
pg_wait_gone() {
  local i
  for ((i = 0; i < 50; i++)); do
    [[ "$(pg_sql "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$1'")" == 0 ]] && return 0
    sleep 0.1
  done
  log "WARNING: backends of $1 still there 5 s after hookyard stopped"
}

# pg_setup: checks the connection, reads the server's settings for the JSON and finds its
# postmaster on this machine (the parent of the checkpointer, whose pid pg_stat_activity shows
# to any user); dies if the server is not local, as its CPU could not be counted.
pg_setup() {
  local cp stat rest f
  pg_sql 'SELECT 1' >/dev/null || die "cannot connect to PostgreSQL at PG_URL ($(pg_display_url))"
  PG_VERSION=$(pg_sql 'SHOW server_version')
  PG_SYNC_COMMIT=$(pg_sql 'SHOW synchronous_commit')
  PG_FSYNC=$(pg_sql 'SHOW fsync')
  PG_WAL_SYNC=$(pg_sql 'SHOW wal_sync_method')
  cp=$(pg_sql "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
  [[ "$cp" =~ ^[0-9]+$ && "$(cat "/proc/$cp/comm" 2>/dev/null)" == postgres ]] \
    || die "PostgreSQL at $(pg_display_url) does not run on this machine (no local checkpointer, pid '$cp'): its CPU cannot be counted"
  stat=$(<"/proc/$cp/stat")
  rest=${stat##*) }
  read -ra f <<<"$rest"
  PG_POSTMASTER=${f[1]} # field 4, ppid
  [[ "$(cat "/proc/$PG_POSTMASTER/comm" 2>/dev/null)" == postgres ]] \
    || die "the parent ($PG_POSTMASTER) of PostgreSQL's checkpointer ($cp) is not postgres"
  [[ "$PG_SYNC_COMMIT" == on ]] || log "note: the server has synchronous_commit=$PG_SYNC_COMMIT (not on)"
  log "postgres: $PG_VERSION at $(pg_display_url), postmaster pid $PG_POSTMASTER," \
    "synchronous_commit=$PG_SYNC_COMMIT fsync=$PG_FSYNC wal_sync_method=$PG_WAL_SYNC"
}

# pg_schema_bytes SCHEMA: size of the schema's tables, their indexes and TOAST.
pg_schema_bytes() {
  pg_sql "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '$1' AND c.relkind = 'r'"
}

# Called by lib.sh's cleanup once every process has stopped: drops the schemas still left.
bench_cleanup() {
  local s
  for s in "${PG_SCHEMAS[@]+"${PG_SCHEMAS[@]}"}"; do
    log "dropping schema $s"
    pg_drop_schema "$s" || log "WARNING: could not drop schema $s; drop it by hand"
  done
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

# write_config MODE FILE: the hookyard config of one run (pg: PG_SCHEMA and PG_APP of the run).
write_config() {
  local mode=$1 file=$2 storage
  case "$mode" in
    full) storage='{ path: hookyard.db, sync: full }' ;;
    normal) storage='{ path: hookyard.db, sync: normal }' ;;
    memory) storage='{ path: ":memory:" }' ;;
    pg) storage="{ postgres: { url: \"$(pg_url_app "$PG_APP")\", pool: $PG_POOL, schema: $PG_SCHEMA } }" ;;
  esac
  cat >"$file" <<EOF
server: { listen: "127.0.0.1:0" }
admin: { enabled: false }
egress: { allow: ["127.0.0.0/8"] }
delivery: { max_pending: $MAX_PENDING }
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
  if [[ "$mode" == pg ]]; then
    PG_SCHEMA="bench_${TS,,}_r$round"
    PG_APP="hookyard-$PG_SCHEMA"
    [[ "$(pg_sql "SELECT count(*) FROM pg_namespace WHERE nspname = '$PG_SCHEMA'")" == 0 ]] \
      || die "schema $PG_SCHEMA already exists"
    PG_SCHEMAS+=("$PG_SCHEMA") # hookyard creates it
  fi
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
  local round=$1 mode=$2 out c0 t0 cpu0 cpu1 cpu2 acc store warns kv backends=()
  local lsn0 commits0 syncs0 lsn1 commits1 syncs1
  local pg_ticks=- pg_ticks_drain=- pg_backend_ticks=- pg_wal=- pg_commits=- pg_syncs=-
  start_hookyard "$mode" "$round"
  sanity "$mode"
  if ((WARMUP_S > 0)); then
    c0=$(sink_count)
    dur_wrk "$WARMUP_S" "$SUT_DIR/wrk-warmup.txt"
    drain $((c0 + $(wrk_accepted "$SUT_DIR/wrk-warmup.txt")))
  fi
  out="$SUT_DIR/wrk.txt"
  if ((USE_PG)); then read -r lsn0 commits0 syncs0 < <(pg_counters); fi
  c0=$(sink_count)
  ((USE_PG)) && pg_cpu_snapshot "$SUT_DIR/pg-cpu0"
  cpu0=$(cpu_ticks "$SUT_PID")
  now_us
  t0=$NOW_US
  dur_wrk "$DURATION_S" "$out"
  cpu1=$(cpu_ticks "$SUT_PID")
  ((USE_PG)) && pg_cpu_snapshot "$SUT_DIR/pg-cpu1"
  acc=$(wrk_accepted "$out")
  drain $((c0 + acc))
  cpu2=$(cpu_ticks "$SUT_PID")
  ((USE_PG)) && pg_cpu_snapshot "$SUT_DIR/pg-cpu2"
  kill -0 "$SINK_PID" 2>/dev/null || die "sink died"
  kill -0 "$SUT_PID" 2>/dev/null || die "hookyard ($mode) died; log: $SUT_DIR/hookyard.err"
  if ((USE_PG)); then
    pg_ticks=$(pg_ticks_all "$SUT_DIR/pg-cpu0" "$SUT_DIR/pg-cpu1")
    pg_ticks_drain=$(pg_ticks_all "$SUT_DIR/pg-cpu0" "$SUT_DIR/pg-cpu2")
  fi
  if [[ "$mode" == pg ]]; then
    mapfile -t backends < <(pg_sql "SELECT pid FROM pg_stat_activity WHERE application_name = '$PG_APP'")
    pg_backend_ticks=$(pg_ticks_of "$SUT_DIR/pg-cpu0" "$SUT_DIR/pg-cpu1" "${backends[@]}")
    store=$(pg_schema_bytes "$PG_SCHEMA")
  else
    store=$(store_bytes "$SUT_DIR")
  fi
  stop_pid "$SUT_PID" "hookyard ($mode)"
  if ((USE_PG)); then
    # the server's WAL bytes, this database's commits and the server's WAL flushes from the
    # start of the wrk run until hookyard stopped (accepts, and the settles of the drain)
    if [[ "$mode" == pg ]]; then pg_wait_gone "$PG_APP"; fi
    read -r lsn1 commits1 syncs1 < <(pg_counters)
    pg_wal=$(pg_sql "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")
    pg_commits=$((commits1 - commits0)) pg_syncs=$((syncs1 - syncs0))
  fi
  if [[ "$mode" == pg ]]; then pg_drop_schema "$PG_SCHEMA"; fi
  warns=$(grep -cv '^[[:space:]]*$' "$SUT_DIR/hookyard.err" || true)
  rm -f "$SUT_DIR"/hookyard.db* # can be hundreds of MB per run; keep configs, logs, wrk output
  kv=$(sed -n 's/^DUR_RESULT //p' "$out")
  # round mode sink_delta drain_ms drain_timeout sut_ticks store_bytes log_warn deliver_us
  # sut_ticks_drain pg_ticks pg_ticks_drain pg_backend_ticks pg_wal_bytes pg_commits pg_wal_syncs kv
  printf '%s\t' "$round" "$mode" $((DRAIN_COUNT - c0)) "$DRAIN_MS" "$DRAIN_TIMEOUT" $((cpu1 - cpu0)) \
    "$store" "${warns:-0}" $((DRAIN_AT_US - t0)) $((cpu2 - cpu0)) "$pg_ticks" "$pg_ticks_drain" \
    "$pg_backend_ticks" "$pg_wal" "$pg_commits" "$pg_syncs" >>"$ROWS"
  printf '%s\n' "$kv" >>"$ROWS"
  python3 "$HERE/report.py" row "$CLK_TCK" "$(tail -n 1 "$ROWS")" >&2
}

# -------------------------------------------------------------------- main
log "rounds=$ROUNDS duration=${DURATION_S}s warmup=${WARMUP_S}s connections=$CONNECTIONS modes=[$MODES]" \
  "cpus: load=$LOAD_CPU hookyard=$SUT_CPU ($WORKER_THREADS threads) store: $WORK ($STORE_FS)"
((USE_PG)) && pg_setup
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
  "clk_tck=$CLK_TCK" "body_bytes=$BODY_BYTES" "store_fs=$STORE_FS" "max_pending=$MAX_PENDING"
  "drain_max_s=$DRAIN_MAX"
  "hookyard=$HOOKYARD"
)
if ((USE_PG)); then
  META+=(
    "pg_url=$(pg_display_url)" "pg_pool=$PG_POOL" "pg_version=$PG_VERSION"
    "pg_synchronous_commit=$PG_SYNC_COMMIT" "pg_fsync=$PG_FSYNC" "pg_wal_sync_method=$PG_WAL_SYNC"
    "pg_cpu=postmaster and all its children, utime+stime (+ cutime+cstime of the exited)"
  )
fi
mapfile -t -O "${#META[@]}" META < <(run_meta)
python3 "$HERE/report.py" summary "$ROWS" "$JSON" "${META[@]}"
log "results written to ${JSON#"$ROOT"/}"
