# shellcheck shell=bash
# Helpers shared by bench/e2e.sh, bench/durability.sh and bench/cluster.sh: logging, process
# tracking and cleanup, installing tools, building the binaries under test, CPU pinning, CPU
# accounting, the sink's counter, draining, wrk runs, and the run metadata. Sourced, never run:
#
#   BENCH_NAME=e2e; source "$BENCH_DIR/lib.sh"
#
# The sourcing script sets BENCH_NAME (the log prefix), BENCH_DIR and ROOT first, and later
# LOAD_CPU, SUT_CPU, SINK_ADDR (host:port of the sink), DRAIN_MAX (s), DRAIN_STABLE_MS and
# KEEP_WORKDIR, which the helpers below read. State the helpers keep: PIDS (processes to stop on
# exit), WORK (the work directory, removed on success unless KEEP_WORKDIR=1).

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$BENCH_NAME" -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# positive_int NAME VALUE: dies unless VALUE is a positive integer.
positive_int() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer (got '$2')"; }

# dur_secs DURATION: "10s" / "1m" / "2h" / "500ms" / "2" -> whole seconds (rounded up).
dur_secs() {
  local d=$1
  case "$d" in
    *ms) echo $(((${d%ms} + 999) / 1000)) ;;
    *s) echo "${d%s}" ;;
    *m) echo $((${d%m} * 60)) ;;
    *h) echo $((${d%h} * 3600)) ;;
    *) echo "$d" ;;
  esac
}

# now_us: sets NOW_US to wall-clock microseconds (no subshell).
now_us() { local t=$EPOCHREALTIME; NOW_US=$((10#${t/./})); }

# ---------------------------------------------------------- process tracking
WORK=""
PIDS=()

track() { PIDS+=("$1"); }

untrack() {
  local kept=() p
  for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || kept+=("$p"); done
  PIDS=("${kept[@]+"${kept[@]}"}")
}

# stop_pid PID NAME: SIGTERM, up to 5 s grace, then SIGKILL; reaps the child and untracks it
# (also when it had already exited).
stop_pid() {
  local pid=$1 name=${2:-process} i
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      # a zombie child still answers kill -0; it is done
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

# On exit: stop every tracked process (newest first), then run the sourcing script's
# bench_cleanup if it defines one (e.g. to drop the database schemas it created, once nothing
# uses them), remove WORK unless the run failed or KEEP_WORKDIR=1. Ctrl-C and SIGTERM exit
# through it too.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}" "pid ${PIDS[i]}"; done
  if declare -F bench_cleanup >/dev/null; then bench_cleanup || log "WARNING: bench_cleanup failed"; fi
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
# apt_update PKG...: before installing PKG... (named in the error): dies unless root with apt-get,
# then reads the package lists (once), so that apt-cache knows what can be installed.
APT_UPDATED=0
apt_update() {
  [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null \
    || die "missing $*; install them (apt-get install $*) or run as root"
  ((APT_UPDATED)) || DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  APT_UPDATED=1
}

# apt_install PKG...: installs packages with apt-get (needs root), or dies naming them.
apt_install() {
  apt_update "$@"
  log "installing: $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# missing_tools: prints the packages of wrk, curl, python3 and taskset that are not installed.
missing_tools() {
  command -v wrk >/dev/null || echo wrk
  command -v curl >/dev/null || echo curl
  command -v python3 >/dev/null || echo python3
  command -v taskset >/dev/null || echo util-linux
}

# ensure_built BINARY: a binary under $ROOT/target/PROFILE/ (hookyard, or examples/NAME) is built
# with cargo when it is missing or older than the sources, so a run never measures stale code:
#   target/release/hookyard               cargo build --release --bin hookyard
#   target/profiling/hookyard             cargo build --profile profiling --bin hookyard
#   target/release/examples/hyper_proxy   cargo build --release --example hyper_proxy
# Any other path must name an executable that exists.
ensure_built() {
  local bin=$1 rel profile name kind newer=""
  rel=${bin#"$ROOT/target/"}
  if [[ "$rel" != "$bin" && "$rel" =~ ^([a-z0-9_-]+)/(examples/)?([a-z0-9_-]+)$ ]]; then
    profile=${BASH_REMATCH[1]} name=${BASH_REMATCH[3]} kind=--bin
    [[ -n "${BASH_REMATCH[2]}" ]] && kind=--example
    [[ -x "$bin" ]] && newer=$(find "$ROOT/src" "$ROOT/bench/baseline" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" \
      -newer "$bin" -print -quit)
    if [[ ! -x "$bin" || -n "$newer" ]]; then
      log "building $name (cargo build --profile $profile $kind $name)${newer:+: $newer is newer than the binary}"
      (cd "$ROOT" && cargo build --profile "$profile" "$kind" "$name") || die "building $name failed"
    fi
  fi
  [[ -x "$bin" ]] || die "binary not found at $bin"
}

# ------------------------------------------------------------------- CPUs
# pin_cpus: with fewer than 2 CPUs, load and server under test share CPU 0; then moves this
# script (and everything it spawns: curl, sed, ...) to LOAD_CPU, off the server's CPU.
pin_cpus() {
  if (($(nproc) < 2)); then
    log "WARNING: only $(nproc) CPU; load and server under test share CPU 0"
    LOAD_CPU=0 SUT_CPU=0
  fi
  taskset -cp "$LOAD_CPU" $$ >/dev/null
}

# cpu_ticks PID...: utime+stime summed over the given processes, in clock ticks.
cpu_ticks() {
  local total=0 pid stat rest f
  for pid in "$@"; do
    stat=$(<"/proc/$pid/stat") || die "process $pid is gone"
    rest=${stat##*) }
    read -ra f <<<"$rest"
    total=$((total + f[11] + f[12])) # fields 14 (utime) and 15 (stime)
  done
  echo "$total"
}

# ------------------------------------------------------------- processes
# listen_addr OUTFILE PID NAME: waits (15 s) for the "listening on ADDR" line that hookyard (run
# and receive) and hyper_proxy print on stdout; prints ADDR. Dies, with the end of the process's
# stderr (OUTFILE with .err for .out), if it exits first or never says so.
listen_addr() {
  local out=$1 pid=$2 name=$3 i addr
  for ((i = 0; i < 150; i++)); do
    addr=$(sed -n 's/^listening on //p' "$out" 2>/dev/null | head -n 1)
    if [[ -n "$addr" ]]; then
      echo "$addr"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || {
      tail -n 20 "${out%.out}.err" >&2 || true
      die "$name exited before listening"
    }
    sleep 0.1
  done
  tail -n 20 "${out%.out}.err" >&2 || true
  die "$name did not print 'listening on' within 15 s"
}

# sink_count: prints the received counter of the sink (`hookyard receive`) at SINK_ADDR.
sink_count() {
  local json n
  json=$(curl -sf --max-time 2 "http://$SINK_ADDR/stats") || die "sink /stats failed"
  n=$(sed -n 's/.*"received"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p' <<<"$json")
  [[ -n "$n" ]] || die "sink /stats has no \"received\" counter: $json"
  echo "$n"
}

# drain [WANT]: polls the sink until it has received at least WANT (default 0) in all and its
# counter has not grown for DRAIN_STABLE_MS, or DRAIN_MAX s have passed since the call. Sets
# DRAIN_COUNT (the final count), DRAIN_START_US (the call), DRAIN_AT_US (when the final count was
# first seen), DRAIN_MS (from the call to then) and DRAIN_TIMEOUT (1 if cut short).
drain() {
  local want=${1:-0} c last deadline
  now_us
  DRAIN_START_US=$NOW_US DRAIN_AT_US=$NOW_US deadline=$((NOW_US + DRAIN_MAX * 1000000))
  last=$(sink_count)
  DRAIN_TIMEOUT=0
  while :; do
    now_us
    if ((last >= want && NOW_US - DRAIN_AT_US >= DRAIN_STABLE_MS * 1000)); then break; fi
    if ((NOW_US >= deadline)); then
      DRAIN_TIMEOUT=1
      break
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
  DRAIN_MS=$(((DRAIN_AT_US - DRAIN_START_US) / 1000))
}

# run_wrk URL SECONDS OUTFILE LUA MARKER [SCRIPT_ARG...]: one wrk run (WRK_THREADS threads,
# default 1; CONNECTIONS connections in all) on LOAD_CPU, bounded by a timeout; the Lua script
# must print a MARKER line.
run_wrk() {
  local url=$1 secs=$2 out=$3 lua=$4 marker=$5 pid rc=0
  shift 5
  timeout --kill-after=5 $((secs + 30)) \
    taskset -c "$LOAD_CPU" wrk -t"${WRK_THREADS:-1}" -c"$CONNECTIONS" -d"${secs}s" --timeout 5s \
    -s "$lua" "$url" -- "$@" >"$out" 2>&1 &
  pid=$!
  track "$pid"
  wait "$pid" || rc=$?
  untrack "$pid"
  if ((rc != 0)) || ! grep -q "^$marker " "$out"; then
    cat "$out" >&2
    die "wrk failed (exit $rc) against $url"
  fi
}

# run_meta: the key=value pairs of the machine and the tree that every results JSON carries.
run_meta() {
  printf '%s\n' \
    "git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || true)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo '-dirty')" \
    "wrk_version=$(wrk -v 2>&1 | head -n 1 | cut -d' ' -f2)" \
    "kernel=$(uname -r)" \
    "cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" \
    "nproc=$(getconf _NPROCESSORS_ONLN)" # not nproc: pin_cpus has already bound this shell to one CPU
}

# ---------------------------------------------------------------- PostgreSQL
# What the scripts that measure a PostgreSQL store share (durability.sh, cluster.sh). They set
# PG_URL, PG_POSTMASTER (their pg_setup) and PG_SCHEMAS (the schemas to drop at exit).

# pg_sql SQL: runs SQL with psql on PG_URL, prints the rows unaligned.
pg_sql() { PGAPPNAME=hookyard-bench-psql psql "$PG_URL" -X -q -At -v ON_ERROR_STOP=1 -c "$1"; }

# pg_url_app NAME: PG_URL with application_name=NAME (URL or key=value form).
pg_url_app() {
  case "$PG_URL" in
    postgres://*\?* | postgresql://*\?*) echo "$PG_URL&application_name=$1" ;;
    postgres://* | postgresql://*) echo "$PG_URL?application_name=$1" ;;
    *) echo "$PG_URL application_name=$1" ;;
  esac
}

# pg_display_url: PG_URL without a password.
pg_display_url() { sed -e 's#^\(postgres\(ql\)\{0,1\}://[^:@/]*\):[^@/]*@#\1@#' -e 's/password=[^ ]*/password=***/' <<<"$PG_URL"; }

# pg_cpu_snapshot FILE: "PID TICKS" (utime+stime) for the postmaster and each of its children,
# and "reaped TICKS", the postmaster's cutime+cstime (children that exited and were waited for).
pg_cpu_snapshot() {
  local pid stat rest f kids
  kids=$(cat "/proc/$PG_POSTMASTER"/task/*/children 2>/dev/null || true)
  for pid in "$PG_POSTMASTER" $kids; do
    { read -r stat <"/proc/$pid/stat"; } 2>/dev/null || continue # exited meanwhile
    rest=${stat##*) }
    read -ra f <<<"$rest"
    echo "$pid $((f[11] + f[12]))"
    if [[ "$pid" == "$PG_POSTMASTER" ]]; then echo "reaped $((f[13] + f[14]))"; fi
  done >"$1"
}

# pg_ticks_all BEFORE AFTER: the server's CPU ticks between two snapshots: what every process
# present afterwards used since (all of it if it started in between), plus what the children
# that exited in between used (their whole life is in "reaped"; the part before BEFORE is
# subtracted).
pg_ticks_all() {
  awk 'FNR == NR { a[$1] = $2; next }
       { b[$1] = $2 }
       END {
         t = 0
         for (p in b) t += b[p] - ((p in a) ? a[p] : 0)
         for (p in a) if (!(p in b)) t -= a[p]
         print t
       }' "$1" "$2"
}

# pg_ticks_of BEFORE AFTER PID...: CPU ticks of the given server processes between two
# snapshots (those that started in between: since their start).
pg_ticks_of() {
  local before=$1 after=$2
  shift 2
  awk -v pids="$*" 'BEGIN { n = split(pids, x, " "); for (i = 1; i <= n; i++) want[x[i]] = 1 }
       FNR == NR { a[$1] = $2; next }
       ($1 in want) { t += $2 - (($1 in a) ? a[$1] : 0) }
       END { print t + 0 }' "$before" "$after"
}

# pg_drop_schema SCHEMA: drops it with all its tables (nothing may be using it).
pg_drop_schema() {
  local s=$1 kept=() x
  # (SET: no NOTICE per dropped table; PGOPTIONS would lose to an options= in PG_URL)
  pg_sql "SET client_min_messages = warning; DROP SCHEMA IF EXISTS \"$s\" CASCADE" >/dev/null
  for x in "${PG_SCHEMAS[@]}"; do [[ "$x" == "$s" ]] || kept+=("$x"); done
  PG_SCHEMAS=("${kept[@]+"${kept[@]}"}")
}
