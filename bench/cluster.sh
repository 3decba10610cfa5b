#!/usr/bin/env bash
# Cluster benchmark: one against two `hookyard run` instances sharing one PostgreSQL schema.
#   one  one instance
#   two  two instances: the same config file, the same storage.postgres url and schema; each
#        accepts webhooks on its own port and delivers from the shared queue (leases)
# in one run, rounds interleaved (one, two, one, two, ...) so that drift of the machine hits
# both modes alike.
#
#   bench/cluster.sh                             # 3 rounds x 10 s, 64 connections
#   ROUNDS=1 DURATION=5s bench/cluster.sh        # quick look
#   LOAD_CPU=0-1 SUT_CPU=0-1 bench/cluster.sh    # nothing pinned
#
# FIGURES ARE INDICATIVE ONLY: on the 2-core machine this was written for, the instances,
# PostgreSQL, wrk and the sink share two cores. By default wrk and the sink run on LOAD_CPU and
# every instance on SUT_CPU (taskset; both instances of `two` on the same core), PostgreSQL
# wherever the kernel puts it (not pinned). So `two` does not get more CPU than `one`: what the
# comparison shows is what splitting one gateway in two costs (leases, heartbeats, two writers
# and two pools against one database), not how a cluster scales on more machines. CPU the
# script could not attribute to any of those processes (other work on the machine, interrupts)
# is reported as "other cores": well above ~0.1 means something else ran; rerun when it is quiet.
#
# Each run gets a fresh schema bench_cluster_<timestamp>_<mode>_r<round> (the instances create
# it) and starts its instances from ONE config file (storage.postgres url + schema, one unsigned
# source, one route to the sink, delivery.max_pending raised to MAX_PENDING as in
# bench/durability.sh), each with its own ports through ${HOOKYARD_BENCH_LISTEN} and
# ${HOOKYARD_BENCH_ADMIN}: a config's version is the hash of its text, so two files differing in
# their ports would be two config versions, which the instances report as "config drift". Every
# instance has an admin listener (ADMIN_PORT_BASE + i, with a token); the script waits until
# each one's `GET /api/v1/status` shows `cluster.live` equal to the number of instances, sends
# one event to each (it must reach the sink), runs an unmeasured WARMUP, then the measured wrk
# run, then waits until the sink has every accepted event. The instances are stopped and the
# schema dropped (DROP SCHEMA ... CASCADE) after each run, and on any exit.
#
# Load: one wrk with WRK_THREADS=2 threads and CONNECTIONS connections in both modes (so the
# load side is the same); bench/cluster/spread.lua (bench/durability/post_event.lua's 1 KiB
# unsigned POST) sends thread i to instance ((i-1) mod N)+1, so with two instances each gets
# half the connections. The sink is one `hookyard receive --quiet`, the only destination.
#
# Per run and as medians per mode: accepted/s (wrk's 2xx over its duration; any non-2xx is
# flagged), p50/p99 ingress latency (wrk), delivered/s (events the sink got from wrk's start
# until its counter stopped, over that time), and CPU µs per accepted event of each part during
# the wrk run (utime+stime from /proc): the instances (sum and each), PostgreSQL (the whole
# server, postmaster and all its children, as bench/durability.sh counts it; "pg bk": only the
# backends with the run's application_name, which other clients of the server do not inflate),
# the load (wrk, from this shell's cutime+cstime, + the sink), their total, and the total until
# the sink had every event ("drain us/ev": deliveries still queued when wrk stopped included),
# and "other cores" (see above). Also each instance's share of the accepted and delivered
# events (its /metrics) and the ratios two/one of accepted/s and of CPU per event, of the
# medians and within each round. Prints a table and writes
# bench/results/cluster-<UTC timestamp>.json (ignored by git; bench/cluster/report.py).
#
# Parameters (environment):
#   ROUNDS=3  DURATION=10s  CONNECTIONS=64  WARMUP=1s (0 = none)  MODES="one two"
#   WRK_THREADS=2 (a multiple of the instances of every mode)  HOOKYARD_WORKER_THREADS=2 (each
#   instance)  LOAD_CPU=0  SUT_CPU=1 (taskset lists, e.g. 0-1)  ADMIN_PORT_BASE=18290 (admin of
#   instance i = base + i; ingress ports are chosen by the kernel)
#   HOOKYARD=target/release/hookyard (built with `cargo build --release` when missing or older
#   than src/)  WORK_PARENT=target  DRAIN_MAX=300 (s)  DRAIN_STABLE_MS=300
#   MAX_PENDING=10000000  RESULTS_DIR=bench/results  KEEP_WORKDIR=0
#   PG_URL=postgres://postgres@127.0.0.1:5432/test (also used by psql; the server must run on
#   this machine, its CPU is read from /proc)  PG_POOL=16 (each instance)
#
# Its files (wrk script, report) are in bench/cluster/; the payload is bench/durability's; the
# helpers it shares with the other scripts in bench/lib.sh.
set -euo pipefail
export LC_ALL=C

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
HERE="$BENCH_DIR/cluster"
BENCH_NAME=cluster
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

# ---------------------------------------------------------------- parameters
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-1s}
MODES=${MODES:-"one two"}
WRK_THREADS=${WRK_THREADS:-2}
WORKER_THREADS=${HOOKYARD_WORKER_THREADS:-2}
LOAD_CPU=${LOAD_CPU:-0}
SUT_CPU=${SUT_CPU:-1}
ADMIN_PORT_BASE=${ADMIN_PORT_BASE:-18290}
HOOKYARD=${HOOKYARD:-target/release/hookyard}
WORK_PARENT=${WORK_PARENT:-$ROOT/target}
DRAIN_MAX=${DRAIN_MAX:-300}
DRAIN_STABLE_MS=${DRAIN_STABLE_MS:-300}
MAX_PENDING=${MAX_PENDING:-10000000}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/test}
PG_POOL=${PG_POOL:-16}
BODY_FILE="$BENCH_DIR/durability/event.json"
LUA="$HERE/spread.lua"
REPORT="$HERE/report.py"
ADMIN_TOKEN=bench-cluster-admin-token # loopback only; set so that no "admin API has no token" warning

case "$HOOKYARD" in /*) ;; *) HOOKYARD="$ROOT/$HOOKYARD" ;; esac
positive_int ROUNDS "$ROUNDS"
positive_int CONNECTIONS "$CONNECTIONS"
positive_int WRK_THREADS "$WRK_THREADS"
positive_int HOOKYARD_WORKER_THREADS "$WORKER_THREADS"
positive_int PG_POOL "$PG_POOL"
positive_int MAX_PENDING "$MAX_PENDING"
positive_int ADMIN_PORT_BASE "$ADMIN_PORT_BASE"
[[ -n "${MODES// /}" ]] || die "MODES is empty"

# instances MODE: how many instances a mode runs (0: not a mode).
instances() {
  case "$1" in
    one) echo 1 ;;
    two) echo 2 ;;
    *) echo 0 ;;
  esac
}
for m in $MODES; do
  n=$(instances "$m")
  ((n > 0)) || die "unknown mode '$m' (one, two)"
  ((WRK_THREADS % n == 0)) || die "WRK_THREADS=$WRK_THREADS is not a multiple of $n (mode $m): the instances would not get the same share of the connections"
done
((CONNECTIONS % WRK_THREADS == 0)) || die "CONNECTIONS=$CONNECTIONS is not a multiple of WRK_THREADS=$WRK_THREADS"

DURATION_S=$(dur_secs "$DURATION")
WARMUP_S=$(dur_secs "$WARMUP")
[[ "$DURATION_S" =~ ^[0-9]+$ && "$DURATION_S" -ge 1 ]] || die "DURATION must be like 10s or 1m"
[[ "$WARMUP_S" =~ ^[0-9]+$ ]] || die "WARMUP must be like 1s or 0"

# ------------------------------------------------------------- dependencies
mapfile -t missing < <(missing_tools)
if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
for t in wrk curl python3 taskset; do command -v "$t" >/dev/null || die "$t not found"; done
command -v psql >/dev/null || apt_install postgresql-client

ensure_built "$HOOKYARD"
[[ -f "$BODY_FILE" && -f "$LUA" && -f "$REPORT" ]] || die "$BODY_FILE, $LUA or $REPORT missing"

pin_cpus
CLK_TCK=$(getconf CLK_TCK)

mkdir -p "$WORK_PARENT" "$RESULTS_DIR"
WORK=$(mktemp -d "$WORK_PARENT/hookyard-cluster.XXXXXX")
TS=$(date -u +%Y%m%dT%H%M%SZ)
ROWS="$WORK/rows.txt"
: >"$ROWS"

# ---------------------------------------------------------------- PostgreSQL
# (the same way bench/durability.sh finds the server and counts its CPU)
PG_SCHEMAS=()    # schemas created and not dropped yet
PG_POSTMASTER="" # pid of the server's postmaster (pg_setup)

# pg_setup: checks the connection and finds the server's postmaster on this machine (the
# parent of the checkpointer); dies if the server is not local, as its CPU could not be counted.
pg_setup() {
  local cp stat rest f
  pg_sql 'SELECT 1' >/dev/null || die "cannot connect to PostgreSQL at PG_URL ($(pg_display_url))"
  PG_VERSION=$(pg_sql 'SHOW server_version')
  PG_SYNC_COMMIT=$(pg_sql 'SHOW synchronous_commit')
  cp=$(pg_sql "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
  [[ "$cp" =~ ^[0-9]+$ && "$(cat "/proc/$cp/comm" 2>/dev/null)" == postgres ]] \
    || die "PostgreSQL at $(pg_display_url) does not run on this machine (no local checkpointer, pid '$cp'): its CPU cannot be counted"
  stat=$(<"/proc/$cp/stat")
  rest=${stat##*) }
  read -ra f <<<"$rest"
  PG_POSTMASTER=${f[1]}
  [[ "$(cat "/proc/$PG_POSTMASTER/comm" 2>/dev/null)" == postgres ]] \
    || die "the parent ($PG_POSTMASTER) of PostgreSQL's checkpointer ($cp) is not postgres"
  log "postgres: $PG_VERSION at $(pg_display_url), postmaster pid $PG_POSTMASTER, synchronous_commit=$PG_SYNC_COMMIT"
}

# pg_checkpoints: checkpoints the server has started (timed + requested), "-" if unknown; a
# checkpoint during a run makes its WAL heavier (full-page writes) and so costs the server more.
pg_checkpoints() {
  pg_sql "SELECT num_timed + num_requested FROM pg_stat_checkpointer" 2>/dev/null \
    || pg_sql "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter" 2>/dev/null || echo -
}

# Called by lib.sh's cleanup once every process has stopped: drops the schemas still left.
bench_cleanup() {
  local s
  for s in "${PG_SCHEMAS[@]+"${PG_SCHEMAS[@]}"}"; do
    log "dropping schema $s"
    pg_drop_schema "$s" || log "WARNING: could not drop schema $s; drop it by hand"
  done
}

# --------------------------------------------------------------- accounting
# self_child_ticks: sets CHILD_TICKS to this shell's cutime+cstime, the CPU of every child it
# has waited for (wrk, through timeout). No fork, so reading it adds nothing.
self_child_ticks() {
  local stat rest f
  read -r stat <"/proc/$$/stat"
  rest=${stat##*) }
  read -ra f <<<"$rest"
  CHILD_TICKS=$((f[13] + f[14]))
}

# machine_ticks: sets MACHINE_BUSY to the ticks all CPUs spent busy (user nice system irq
# softirq; /proc/stat), to see what ran besides the processes counted, and MACHINE_IRQ to the
# irq + softirq part of it (loopback traffic's, largely: counted in no process).
machine_ticks() {
  local line f
  read -r line </proc/stat
  read -ra f <<<"$line"
  MACHINE_BUSY=$((f[1] + f[2] + f[3] + f[6] + f[7]))
  MACHINE_IRQ=$((f[6] + f[7]))
}

# ticks_list PID...: "T1,T2,...": cpu_ticks of each process.
ticks_list() {
  local out="" p
  for p in "$@"; do out+="${out:+,}$(cpu_ticks "$p")"; done
  echo "$out"
}

# csv WORD...: the words joined by commas.
csv() {
  local IFS=,
  echo "$*"
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

# write_config FILE SCHEMA APP: the one config every instance of a run starts from.
write_config() {
  cat >"$1" <<EOF
server: { listen: "\${HOOKYARD_BENCH_LISTEN}" }
admin: { enabled: true, listen: "\${HOOKYARD_BENCH_ADMIN}", token: "$ADMIN_TOKEN" }
egress: { allow: ["127.0.0.0/8"] }
delivery: { max_pending: $MAX_PENDING }
storage: { postgres: { url: "$(pg_url_app "$3")", pool: $PG_POOL, schema: $2 } }
sources:
  app: { path: /in, verify: { scheme: none } }
destinations:
  sink: { url: "http://$SINK_ADDR/sink", sign: { scheme: none } }
routes:
  - { name: all, source: app, to: [sink] }
EOF
}

# admin_get ADMIN PATH: GET on an instance's admin API (prints the body; fails on non-2xx).
admin_get() { curl -sf --max-time 2 -H "Authorization: Bearer $ADMIN_TOKEN" "http://$1$2"; }

# start_instance DIR I: instance I of the run whose config is DIR/hookyard.yaml; appends to
# SUT_PIDS, TARGETS (ingress host:port) and ADMINS.
start_instance() {
  local dir=$1 i=$2 pid addr admin=127.0.0.1:$((ADMIN_PORT_BASE + $2))
  mkdir -p "$dir/i$i"
  (cd "$dir/i$i" && HOOKYARD_BENCH_LISTEN=127.0.0.1:0 HOOKYARD_BENCH_ADMIN=$admin \
    HOOKYARD_WORKER_THREADS=$WORKER_THREADS RUST_LOG=warn NO_COLOR=1 exec taskset -c "$SUT_CPU" \
    "$HOOKYARD" run --config "$dir/hookyard.yaml" >"$dir/i$i/hookyard.out" 2>"$dir/i$i/hookyard.err") &
  pid=$!
  SUT_PIDS+=("$pid")
  track "$pid"
  addr=$(listen_addr "$dir/i$i/hookyard.out" "$pid" "hookyard run (instance $i)")
  TARGETS+=("$addr")
  ADMINS+=("$admin")
}

# wait_live N: waits (20 s at most) until every instance's status shows cluster.live == N.
wait_live() {
  local n=$1 a live i
  for a in "${ADMINS[@]}"; do
    live=""
    for ((i = 0; i < 100; i++)); do
      live=$(admin_get "$a" /api/v1/status | python3 "$REPORT" live 2>/dev/null || true)
      [[ "$live" == "$n" ]] && break
      sleep 0.2
    done
    [[ "$live" == "$n" ]] || die "instance with admin $a: cluster.live is '${live:-?}' after 20 s, not $n"
  done
}

# sanity: one POST to each instance must be answered 202 and reach the sink.
sanity() {
  local before code t
  for t in "${TARGETS[@]}"; do
    before=$(sink_count)
    code=$(curl -s -o "$WORK/last_response" -w '%{http_code}' --max-time 5 -X POST \
      --data-binary "@$BODY_FILE" -H 'Content-Type: application/json' "http://$t/in" || echo 000)
    [[ "$code" == 202 ]] || die "POST http://$t/in answered $code: $(head -c 300 "$WORK/last_response")"
    drain $((before + 1))
    ((DRAIN_TIMEOUT == 0)) || die "the sink did not get the sanity event sent to $t within ${DRAIN_MAX} s"
  done
}

# spread_wrk SECONDS OUTFILE: one wrk run over every instance (bench/cluster/spread.lua).
spread_wrk() {
  CLUSTER_TARGETS="${TARGETS[*]}"
  export CLUSTER_TARGETS
  run_wrk "http://${TARGETS[0]}/in" "$1" "$2" "$LUA" DUR_RESULT "$BODY_FILE"
}

# wrk_accepted OUTFILE: requests - non-2xx.
wrk_accepted() {
  sed -n 's/^DUR_RESULT requests=\([0-9]*\) .* err_status=\([0-9]*\) .*/\1 \2/p' "$1" | {
    read -r req st
    echo $((req - st))
  }
}

# scrape DIR TAG: every instance's /metrics into DIR/iN/metrics-TAG.
scrape() {
  local i
  for i in "${!ADMINS[@]}"; do
    admin_get "${ADMINS[i]}" /metrics >"$1/i$((i + 1))/metrics-$2" || die "GET /metrics of instance $((i + 1)) failed"
  done
}

# measure ROUND MODE: start the instances, wait for the cluster, warm up, one measured wrk run,
# drain, stop; appends a row.
measure() {
  local round=$1 mode=$2 n dir schema app i out c0 t0 acc kv
  local hy0 hy1 hy2 sink0 sink1 sink2 wrk0 wrk1 busy0 busy1 irq0 irq1 pg_ticks pg_ticks_drain
  local pg_backend_ticks ckpt0 ckpt1 ckpt=- split=() lives=() drifts=() warns=() backends=() s
  n=$(instances "$mode")
  dir="$WORK/$mode-r$round"
  mkdir -p "$dir"
  schema="bench_cluster_${TS,,}_${mode}_r$round"
  app="hookyard-$schema"
  [[ "$(pg_sql "SELECT count(*) FROM pg_namespace WHERE nspname = '$schema'")" == 0 ]] \
    || die "schema $schema already exists"
  PG_SCHEMAS+=("$schema") # the instances create it
  write_config "$dir/hookyard.yaml" "$schema" "$app"
  SUT_PIDS=() TARGETS=() ADMINS=()
  for ((i = 1; i <= n; i++)); do start_instance "$dir" "$i"; done
  wait_live "$n"
  log "$mode: $n instance(s) live (ingress ${TARGETS[*]}; admin ${ADMINS[*]}), schema $schema"
  sanity
  if ((WARMUP_S > 0)); then
    c0=$(sink_count)
    spread_wrk "$WARMUP_S" "$dir/wrk-warmup.txt"
    drain $((c0 + $(wrk_accepted "$dir/wrk-warmup.txt")))
  fi
  out="$dir/wrk.txt"
  scrape "$dir" 0
  ckpt0=$(pg_checkpoints)
  c0=$(sink_count)
  pg_cpu_snapshot "$dir/pg-cpu0"
  hy0=$(ticks_list "${SUT_PIDS[@]}")
  sink0=$(cpu_ticks "$SINK_PID")
  machine_ticks
  busy0=$MACHINE_BUSY irq0=$MACHINE_IRQ
  now_us
  t0=$NOW_US
  self_child_ticks
  wrk0=$CHILD_TICKS
  spread_wrk "$DURATION_S" "$out"
  self_child_ticks
  wrk1=$CHILD_TICKS
  machine_ticks
  busy1=$MACHINE_BUSY irq1=$MACHINE_IRQ
  sink1=$(cpu_ticks "$SINK_PID")
  hy1=$(ticks_list "${SUT_PIDS[@]}")
  pg_cpu_snapshot "$dir/pg-cpu1"
  acc=$(wrk_accepted "$out")
  drain $((c0 + acc))
  hy2=$(ticks_list "${SUT_PIDS[@]}")
  sink2=$(cpu_ticks "$SINK_PID")
  pg_cpu_snapshot "$dir/pg-cpu2"
  kill -0 "$SINK_PID" 2>/dev/null || die "sink died"
  for i in "${!SUT_PIDS[@]}"; do
    kill -0 "${SUT_PIDS[i]}" 2>/dev/null || die "instance $((i + 1)) ($mode) died; log: $dir/i$((i + 1))/hookyard.err"
  done
  scrape "$dir" 1
  ckpt1=$(pg_checkpoints)
  [[ $ckpt0 == - || $ckpt1 == - ]] || ckpt=$((ckpt1 - ckpt0))
  for i in "${!ADMINS[@]}"; do
    # accepted and delivered by this instance during the measured run, its view of the cluster
    split+=("$(python3 "$REPORT" split "$dir/i$((i + 1))/metrics-0" "$dir/i$((i + 1))/metrics-1")")
    read -r s < <(admin_get "${ADMINS[i]}" /api/v1/status | python3 "$REPORT" live-drift) \
      || die "GET /api/v1/status of instance $((i + 1)) failed"
    lives+=("${s% *}") drifts+=("${s#* }")
  done
  pg_ticks=$(pg_ticks_all "$dir/pg-cpu0" "$dir/pg-cpu1")
  # the backends of this run's instances alone (other clients of the server excluded)
  mapfile -t backends < <(pg_sql "SELECT pid FROM pg_stat_activity WHERE application_name = '$app'")
  pg_backend_ticks=$(pg_ticks_of "$dir/pg-cpu0" "$dir/pg-cpu1" "${backends[@]}")
  pg_ticks_drain=$(pg_ticks_all "$dir/pg-cpu0" "$dir/pg-cpu2")
  for ((i = ${#SUT_PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${SUT_PIDS[i]}" "instance $((i + 1)) ($mode)"; done
  pg_drop_schema "$schema"
  for ((i = 1; i <= n; i++)); do warns+=("$(grep -cv '^[[:space:]]*$' "$dir/i$i/hookyard.err" || true)"); done
  kv=$(sed -n 's/^DUR_RESULT //p' "$out")
  # one line of key=value; lists (one item per instance) comma-separated, split's items "acc:dlv"
  echo "round=$round mode=$mode instances=$n sink_delta=$((DRAIN_COUNT - c0)) drain_ms=$DRAIN_MS" \
    "drain_timeout=$DRAIN_TIMEOUT deliver_us=$((DRAIN_AT_US - t0)) hy_ticks0=$hy0 hy_ticks1=$hy1" \
    "hy_ticks2=$hy2 pg_ticks=$pg_ticks pg_ticks_drain=$pg_ticks_drain pg_backend_ticks=$pg_backend_ticks" \
    "pg_checkpoints=$ckpt wrk_ticks=$((wrk1 - wrk0)) sink_ticks=$((sink1 - sink0))" \
    "sink_ticks_drain=$((sink2 - sink0)) machine_busy_ticks=$((busy1 - busy0)) machine_irq_ticks=$((irq1 - irq0))" \
    "split=$(csv "${split[@]}") live=$(csv "${lives[@]}") drift=$(csv "${drifts[@]}")" \
    "log_warn=$(csv "${warns[@]}") $kv" >>"$ROWS"
  python3 "$REPORT" row "$CLK_TCK" "$(tail -n 1 "$ROWS")" >&2
}

# -------------------------------------------------------------------- main
log "rounds=$ROUNDS duration=${DURATION_S}s warmup=${WARMUP_S}s connections=$CONNECTIONS wrk threads=$WRK_THREADS" \
  "modes=[$MODES] cpus: load=$LOAD_CPU instances=$SUT_CPU ($WORKER_THREADS worker threads each), postgres unpinned"
pg_setup
start_sink
# the config must be valid (env ports filled in for the check)
write_config "$WORK/check.yaml" bench_cluster_check hookyard-bench-check
HOOKYARD_BENCH_LISTEN=127.0.0.1:0 HOOKYARD_BENCH_ADMIN=127.0.0.1:$ADMIN_PORT_BASE \
  "$HOOKYARD" check --config "$WORK/check.yaml" >"$WORK/check.out" 2>&1 \
  || { cat "$WORK/check.out" >&2; die "hookyard check refused the generated config"; }
for ((r = 1; r <= ROUNDS; r++)); do
  for m in $MODES; do
    log "round $r/$ROUNDS: $m"
    measure "$r" "$m"
  done
done
stop_pid "$SINK_PID" sink

JSON="$RESULTS_DIR/cluster-$TS.json"
META=(
  "timestamp=$TS" "rounds=$ROUNDS" "duration_s=$DURATION_S" "warmup_s=$WARMUP_S"
  "connections=$CONNECTIONS" "wrk_threads=$WRK_THREADS" "worker_threads=$WORKER_THREADS"
  "load_cpu=$LOAD_CPU" "sut_cpu=$SUT_CPU" "clk_tck=$CLK_TCK" "body_bytes=$(wc -c <"$BODY_FILE")"
  "max_pending=$MAX_PENDING" "drain_max_s=$DRAIN_MAX" "hookyard=$HOOKYARD"
  "pg_url=$(pg_display_url)" "pg_pool=$PG_POOL" "pg_version=$PG_VERSION"
  "pg_synchronous_commit=$PG_SYNC_COMMIT" "pg_pinned=no"
)
mapfile -t -O "${#META[@]}" META < <(run_meta)
python3 "$REPORT" summary "$ROWS" "$JSON" "${META[@]}"
log "results written to ${JSON#"$ROOT"/}"
