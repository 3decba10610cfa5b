#!/usr/bin/env bash
# End-to-end benchmark of Hookyard against a bare sink and an nginx reverse
# proxy. See bench/README.md for what is measured and how to read it.
#
#   ROUNDS=3 DURATION=10s CONNECTIONS=32 bench/e2e.sh
#
# Scenarios (rounds interleaved: direct, nginx, hyper-proxy, hookyard-1,
# hookyard-1-transform, hookyard-3, direct, ...):
#   direct                wrk -> sink
#   nginx                 wrk -> nginx (proxy_pass, keepalive upstream, 1 worker) -> sink
#   hyper-proxy           wrk -> bench/baseline/hyper_proxy.rs (a bare hyper reverse proxy on
#                         hookyard's HTTP stack, 1 worker) -> sink: the floor of that stack
#   hookyard-1            wrk -> hookyard (1 route, 1 destination) -> sink
#   hookyard-1-transform  as hookyard-1 with the github_chat.wasm plugin on the route
#   hookyard-1-otlp       as hookyard-1 exporting its spans (telemetry.otlp) to a second
#                         `hookyard receive` on the load CPU that discards them
#                         (push -> {"text", "channel"}) -> sink
#   hookyard-2            wrk -> hookyard (1 route, 2 destinations: same sink, 2 paths) -> sink
#   hookyard-2-chain      as hookyard-2, but a chain: sink2 (`then:`) only after sink1 answered,
#                         its URL rendered from sink1's answer ({{ response.sink1:status }})
#   hookyard-3            wrk -> hookyard (1 route, 3 destinations: same sink, 3 paths) -> sink
#   hookyard-1-tail       as hookyard-1 with a browser tab (headless Chromium on LOAD_CPU,
#                         bench/e2e/tail_tab.mjs) on the console's event log, live tail on: what
#                         a console left open costs the gateway (needs `bash scripts/browser.sh`)
# The sink is `hookyard receive --quiet` in every scenario. wrk and the sink run
# on LOAD_CPU (0); the server under test (nginx or hookyard) runs on SUT_CPU (1).
# Its files (payload, wrk script, nginx config, report) are in bench/e2e/; the
# helpers it shares with bench/durability.sh in bench/lib.sh.
set -euo pipefail
export LC_ALL=C

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
HERE="$BENCH_DIR/e2e"
BENCH_NAME=e2e
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

# ---------------------------------------------------------------- parameters
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
HOOKYARD=${HOOKYARD:-target/release/hookyard}
HYPER_PROXY=${HYPER_PROXY:-target/release/examples/hyper_proxy}
PORT_BASE=${PORT_BASE:-18080}
WARMUP=${WARMUP:-1s}                  # wrk run before each measured run; 0 = none
DRAIN_MAX=${DRAIN_MAX:-10}            # s: longest wait for queued deliveries after wrk stops
DRAIN_STABLE_MS=${DRAIN_STABLE_MS:-500} # ms without sink growth that counts as drained
SCENARIOS=${SCENARIOS:-"direct nginx hyper-proxy hookyard-1 hookyard-1-transform hookyard-3"}
LOAD_CPU=${LOAD_CPU:-0}
SUT_CPU=${SUT_CPU:-1}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
STORAGE_SYNC=${STORAGE_SYNC:-}        # hookyard storage.sync (full|normal); empty = hookyard's default
PLUGIN=${PLUGIN:-plugins/dist/github_chat.wasm} # transform of hookyard-1-transform
PLUGIN_CHANNEL="#deploys"
# check_plugin requires this text in the plugin's output for the payload (empty: any output that
# is not a drop, e.g. PLUGIN=plugins/dist/noop.wasm PLUGIN_EXPECT= to measure the host overhead)
PLUGIN_EXPECT=${PLUGIN_EXPECT-'"text"'}

GITHUB_SECRET="bench-secret"
DEST_SECRET="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY_FILE="$HERE/github_push.json"

HY_PORT=$PORT_BASE
NGINX_PORT=$((PORT_BASE + 1))
ADMIN_PORT=$((PORT_BASE + 2)) # hookyard's admin listener (default 9090 would collide with other runs)
PROXY_PORT=$((PORT_BASE + 3))
SINK_PORT=$((PORT_BASE + 11))
SINK_ADDR="127.0.0.1:$SINK_PORT"
OTLP_PORT=$((PORT_BASE + 12)) # the span sink of hookyard-1-otlp

case "$HOOKYARD" in /*) ;; *) HOOKYARD="$ROOT/$HOOKYARD" ;; esac
case "$PLUGIN" in /*) ;; *) PLUGIN="$ROOT/$PLUGIN" ;; esac
case "$HYPER_PROXY" in /*) ;; *) HYPER_PROXY="$ROOT/$HYPER_PROXY" ;; esac
[[ -z "$STORAGE_SYNC" || "$STORAGE_SYNC" == full || "$STORAGE_SYNC" == normal ]] \
  || die "STORAGE_SYNC must be full or normal (got '$STORAGE_SYNC')"
positive_int ROUNDS "$ROUNDS"
positive_int CONNECTIONS "$CONNECTIONS"
if ! [[ "$PORT_BASE" =~ ^[0-9]+$ ]] || ((PORT_BASE < 1024 || PORT_BASE > 65000)); then
  die "PORT_BASE must be in 1024..65000"
fi
for s in $SCENARIOS; do
  case "$s" in direct | nginx | hyper-proxy | hookyard-1 | hookyard-1-transform | hookyard-1-tail | hookyard-1-otlp | hookyard-2 | hookyard-2-chain | hookyard-3) ;;
    *) die "unknown scenario '$s'" ;;
  esac
done

DURATION_S=$(dur_secs "$DURATION")
WARMUP_S=$(dur_secs "$WARMUP")
[[ "$DURATION_S" =~ ^[0-9]+$ && "$DURATION_S" -ge 1 ]] || die "DURATION must be like 10s or 1m"
[[ "$WARMUP_S" =~ ^[0-9]+$ ]] || die "WARMUP must be like 1s or 0"

# ------------------------------------------------------------- dependencies
NGINX_BIN=$(command -v nginx || true)
[[ -z "$NGINX_BIN" && -x /usr/sbin/nginx ]] && NGINX_BIN=/usr/sbin/nginx

install_deps() {
  local pkgs=() p
  mapfile -t pkgs < <(missing_tools)
  if [[ -z "$NGINX_BIN" ]]; then
    apt_update "${pkgs[@]}" nginx
    # nginx-light is the smallest build that has the proxy module; fall back to nginx.
    if apt-cache show nginx-light >/dev/null 2>&1; then pkgs+=(nginx-light); else pkgs+=(nginx); fi
  fi
  ((${#pkgs[@]})) || return 0
  # Packages may start the system nginx service; remember whether it ran before.
  local svc_before=0
  [[ -s /run/nginx.pid ]] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null && svc_before=1
  apt_install "${pkgs[@]}"
  if [[ $svc_before == 0 && -s /run/nginx.pid ]] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
    log "stopping the nginx service that the package install started"
    p=$(cat /run/nginx.pid)
    kill -QUIT "$p" 2>/dev/null || true
  fi
  NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
}
install_deps
for t in wrk curl python3 taskset; do command -v "$t" >/dev/null || die "$t not found"; done
[[ -x "$NGINX_BIN" ]] || die "nginx not found"

ensure_built "$HOOKYARD"
case " $SCENARIOS " in *" hyper-proxy "*) ensure_built "$HYPER_PROXY" ;; esac
[[ -f "$BODY_FILE" ]] || die "payload $BODY_FILE missing"
case " $SCENARIOS " in
  *" hookyard-1-transform "*)
    [[ -f "$PLUGIN" ]] || die "plugin $PLUGIN missing (build it with plugins/build.sh)" ;;
esac

pin_cpus
CLK_TCK=$(getconf CLK_TCK)

WORK=$(mktemp -d /tmp/hookyard-e2e.XXXXXX)
mkdir -p "$RESULTS_DIR"
TS=$(date -u +%Y%m%dT%H%M%SZ)
ROWS="$WORK/rows.tsv"

# ------------------------------------------------------------------ payload
SIG="sha256=$(python3 -c 'import hashlib, hmac, sys
print(hmac.new(sys.argv[1].encode(), open(sys.argv[2], "rb").read(), hashlib.sha256).hexdigest())' \
  "$GITHUB_SECRET" "$BODY_FILE")"
BODY_BYTES=$(wc -c <"$BODY_FILE")
log "payload: $BODY_FILE ($BODY_BYTES bytes), X-Hub-Signature-256: ${SIG:0:23}..."

# ------------------------------------------------------------------ helpers
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_port_free() {
  if port_open "$1"; then die "port $1 is already in use (set PORT_BASE)"; fi
}

# wait_listening OUTFILE PID NAME: wait for the "listening on" stdout line.
wait_listening() { listen_addr "$@" >/dev/null; }

wait_port() {
  local port=$1 pid=$2 name=$3 i
  for ((i = 0; i < 150; i++)); do
    port_open "$port" && return 0
    kill -0 "$pid" 2>/dev/null || die "$name exited before listening on $port"
    sleep 0.1
  done
  die "$name not listening on $port within 15 s"
}

# cpu_busy CPU: prints "busy total" jiffies of one CPU from /proc/stat.
cpu_busy() {
  local name v
  while read -r name v; do
    if [[ "$name" == "cpu$1" ]]; then
      local f
      read -ra f <<<"$v" # user nice system idle iowait irq softirq steal ...
      echo "$((f[0] + f[1] + f[2] + f[5] + f[6] + f[7])) $((f[0] + f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7]))"
      return 0
    fi
  done </proc/stat
  echo "0 0"
}

# hwm_kb PID...: peak resident set (VmHWM) summed over the processes, in KiB.
hwm_kb() {
  local total=0 pid v
  for pid in "$@"; do
    v=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$pid/status" 2>/dev/null || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

children_of() { cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | sed '/^$/d'; }

# post URL [SIGNATURE]: one signed request with curl; prints the HTTP status.
post() {
  curl -s -o "$WORK/last_response" -w '%{http_code}' --max-time 5 -X POST \
    --data-binary "@$BODY_FILE" -H 'Content-Type: application/json' \
    -H 'X-GitHub-Event: push' -H "X-Hub-Signature-256: ${2:-$SIG}" "$1" || echo 000
}

# wait_sink_at_least N: bounded wait (5 s) until the sink counter reaches N.
wait_sink_at_least() {
  local want=$1 i c
  for ((i = 0; i < 50; i++)); do
    c=$(sink_count)
    ((c >= want)) && return 0
    sleep 0.1
  done
  return 1
}

# e2e_wrk URL SECONDS OUTFILE: one signed wrk run (bench/e2e/signed_post.lua).
e2e_wrk() { run_wrk "$1" "$2" "$3" "$HERE/signed_post.lua" E2E_RESULT "$BODY_FILE" "$SIG"; }

# ------------------------------------------------------------------ servers
# start_receiver PORT NAME FILE: a `hookyard receive --quiet` on the load CPU (not charged to
# the server under test), its output in $WORK/FILE.out; sets RECEIVER_PID.
RECEIVER_PID=""
start_receiver() {
  ensure_port_free "$1"
  HOOKYARD_WORKER_THREADS=1 RUST_LOG=warn taskset -c "$LOAD_CPU" \
    "$HOOKYARD" receive --listen "127.0.0.1:$1" --quiet \
    >"$WORK/$3.out" 2>"$WORK/$3.err" &
  RECEIVER_PID=$!
  track "$RECEIVER_PID"
  wait_listening "$WORK/$3.out" "$RECEIVER_PID" "hookyard receive ($2)"
  log "$2: hookyard receive on 127.0.0.1:$1 (pid $RECEIVER_PID, CPU $LOAD_CPU)"
}

SINK_PID=""
start_sink() {
  start_receiver "$SINK_PORT" sink sink
  SINK_PID=$RECEIVER_PID
  sink_count >/dev/null
}

# start_otlp_sink: a second receiver, apart from the sink that counts deliveries, that takes the
# OTLP exports of hookyard-1-otlp and discards them.
OTLP_PID=""
start_otlp_sink() {
  start_receiver "$OTLP_PORT" "OTLP sink" otlp
  OTLP_PID=$RECEIVER_PID
}

render_nginx_conf() {
  local prefix=$1 user_line=""
  [[ $EUID -eq 0 ]] && user_line="user root;"
  mkdir -p "$prefix"/{client_body,proxy,fastcgi,uwsgi,scgi}
  sed -e "s|@PREFIX@|$prefix|g" -e "s|@SINK_PORT@|$SINK_PORT|g" \
    -e "s|@LISTEN_PORT@|$NGINX_PORT|g" -e "s|@USER_LINE@|$user_line|g" \
    "$HERE/nginx.conf.template" >"$prefix/nginx.conf"
}

# write_hookyard_conf FANOUT FILE [TRANSFORM] [CHAIN] [OTLP]: TRANSFORM=1 puts $PLUGIN on the route;
# CHAIN=1 makes the destinations a chain (sink2 only after sink1 answered, its URL rendered from
# sink1's answer) instead of a fan-out; OTLP=1 exports spans to the OTLP sink.
write_hookyard_conf() {
  local fanout=$1 file=$2 transform=${3:-0} chain=${4:-0} otlp=${5:-0} i to="" then="" url
  {
    echo "server: { listen: \"127.0.0.1:$HY_PORT\" }"
    [[ $otlp == 0 ]] || echo "telemetry: { otlp: { endpoint: \"http://127.0.0.1:$OTLP_PORT\" } }"
    echo 'egress: { allow: ["127.0.0.0/8"] }'
    if [[ $ADMIN_KEY == 1 ]]; then
      echo "admin: { listen: \"127.0.0.1:$ADMIN_PORT\", token: \"bench-admin-token\" }"
    fi
    [[ -z "$STORAGE_SYNC" ]] || echo "storage: { sync: $STORAGE_SYNC }"
    echo 'sources:'
    echo '  github:'
    echo '    path: /hooks/github'
    echo "    verify: { scheme: github, secret: \"$GITHUB_SECRET\" }"
    echo 'destinations:'
    for ((i = 1; i <= fanout; i++)); do
      url="http://127.0.0.1:$SINK_PORT/sink$i"
      if [[ $chain == 1 && $i -gt 1 ]]; then
        url+="/{{ response.sink$((i - 1)):status }}"
        then+="${then:+, }{ destination: sink$i }"
      else
        to+="${to:+, }sink$i"
      fi
      echo "  sink$i: { url: \"$url\", sign: { scheme: standard-webhooks, secret: \"$DEST_SECRET\" } }"
    done
    echo 'routes:'
    echo '  - name: all-pushes'
    echo '    source: github'
    echo '    when: [ { header: X-GitHub-Event, equals: push } ]'
    if [[ $transform == 1 ]]; then
      echo '    transform:'
      echo "      - plugin: \"$PLUGIN\""
      echo "        config: { channel: \"$PLUGIN_CHANNEL\" }"
    fi
    echo "    to: [$to]"
    [[ -z "$then" ]] || echo "    then: [$then]"
  } >"$file"
}

# check_hookyard_configs: `hookyard check` the configs before any run. Builds
# without the `admin:` key get a config without it (admin then stays on its
# default port, 9090).
ADMIN_KEY=1
check_hookyard_configs() {
  local conf=$WORK/check.yaml v fan tf out
  local ch
  for v in 1 3 1t 2 2c; do
    fan=${v%[tc]} tf=0 ch=0
    [[ $v == *t ]] && tf=1
    [[ $v == *c ]] && ch=1
    if [[ $tf == 1 ]]; then
      case " $SCENARIOS " in *" hookyard-1-transform "*) ;; *) continue ;; esac
    fi
    write_hookyard_conf "$fan" "$conf" "$tf" "$ch"
    if ! out=$("$HOOKYARD" check --config "$conf" 2>&1); then
      if [[ $ADMIN_KEY == 1 && "$out" == *"admin: unknown key"* ]]; then
        log "note: this hookyard build has no admin: config key; its admin listener stays on 9090"
        ADMIN_KEY=0
        write_hookyard_conf "$fan" "$conf" "$tf" "$ch"
        out=$("$HOOKYARD" check --config "$conf" 2>&1) && continue
      fi
      printf '%s\n' "$out" >&2
      die "hookyard check rejected the generated config (fan-out $fan, transform $tf): $conf"
    fi
  done
}

# check_plugin: the transform must turn the bench payload into a chat message
# (no output means it dropped the event and hookyard-1-transform would measure
# something else).
check_plugin() {
  local out
  out=$("$HOOKYARD" plugin test "$PLUGIN" --body "$BODY_FILE" --header 'X-GitHub-Event: push' \
    --config "channel=$PLUGIN_CHANNEL" 2>&1) || { printf '%s\n' "$out" >&2; die "hookyard plugin test failed on $PLUGIN"; }
  [[ "$out" == *'"emit"'* ]] || { printf '%s\n' "$out" >&2; die "$PLUGIN emitted nothing for $BODY_FILE"; }
  if [[ -n "$PLUGIN_EXPECT" ]]; then
    [[ "$out" == *"$PLUGIN_EXPECT"* ]] || { printf '%s\n' "$out" >&2; die "$PLUGIN's output for $BODY_FILE lacks $PLUGIN_EXPECT"; }
  fi
  log "plugin: $(basename "$PLUGIN") output for the payload checked${PLUGIN_EXPECT:+ (contains $PLUGIN_EXPECT)}"
}

# start_sut SCENARIO ROUND: sets SUT_PIDS (processes whose CPU is charged), URL,
# FANOUT, SUT_MAIN (pid to stop; empty for direct), SUT_LOG, SUT_DIR.
start_sut() {
  local sc=$1 round=$2
  SUT_MAIN="" SUT_LOG="" SUT_DIR=""
  case "$sc" in
    direct)
      FANOUT=1
      URL="http://127.0.0.1:$SINK_PORT/sink1"
      SUT_PIDS=("$SINK_PID") # no proxy: the sink is the only server
      ;;
    nginx)
      FANOUT=1
      URL="http://127.0.0.1:$NGINX_PORT/sink1"
      local prefix="$WORK/nginx"
      rm -rf "$prefix"
      render_nginx_conf "$prefix"
      ensure_port_free "$NGINX_PORT"
      taskset -c "$SUT_CPU" "$NGINX_BIN" -p "$prefix/" -e "$prefix/error.log" \
        -c "$prefix/nginx.conf" >"$prefix/stdout" 2>&1 &
      SUT_MAIN=$!
      track "$SUT_MAIN"
      wait_port "$NGINX_PORT" "$SUT_MAIN" nginx
      local kids
      kids=$(children_of "$SUT_MAIN")
      [[ -n "$kids" ]] || die "nginx has no worker process"
      # shellcheck disable=SC2206
      SUT_PIDS=("$SUT_MAIN" $kids)
      SUT_LOG="$prefix/error.log"
      ;;
    hyper-proxy)
      FANOUT=1
      URL="http://127.0.0.1:$PROXY_PORT/sink1"
      SUT_DIR="$WORK/$sc-r$round"
      mkdir -p "$SUT_DIR"
      ensure_port_free "$PROXY_PORT"
      taskset -c "$SUT_CPU" "$HYPER_PROXY" "127.0.0.1:$PROXY_PORT" "http://127.0.0.1:$SINK_PORT" \
        >"$SUT_DIR/proxy.out" 2>"$SUT_DIR/proxy.err" &
      SUT_MAIN=$!
      track "$SUT_MAIN"
      wait_listening "$SUT_DIR/proxy.out" "$SUT_MAIN" "hyper_proxy"
      SUT_PIDS=("$SUT_MAIN")
      SUT_LOG="$SUT_DIR/proxy.err"
      ;;
    hookyard-*)
      local tf=0 ch=0 tail=0 ot=0
      FANOUT=${sc#hookyard-}
      if [[ $FANOUT == *-transform ]]; then FANOUT=${FANOUT%-transform} tf=1; fi
      if [[ $FANOUT == *-tail ]]; then FANOUT=${FANOUT%-tail} tail=1; fi
      if [[ $FANOUT == *-otlp ]]; then FANOUT=${FANOUT%-otlp} ot=1; fi
      if [[ $FANOUT == *-chain ]]; then FANOUT=${FANOUT%-chain} ch=1; fi
      URL="http://127.0.0.1:$HY_PORT/hooks/github"
      # A fresh directory per run: the store (storage.path, default
      # data/hookyard.db next to the config) must not carry pending work over.
      SUT_DIR="$WORK/$sc-r$round"
      mkdir -p "$SUT_DIR"
      write_hookyard_conf "$FANOUT" "$SUT_DIR/hookyard.yaml" "$tf" "$ch" "$ot"
      ensure_port_free "$HY_PORT"
      if [[ $ADMIN_KEY == 1 ]]; then ensure_port_free "$ADMIN_PORT"; fi
      (cd "$SUT_DIR" && HOOKYARD_WORKER_THREADS=1 RUST_LOG=warn exec taskset -c "$SUT_CPU" \
        "$HOOKYARD" run --config "$SUT_DIR/hookyard.yaml" >"$SUT_DIR/hookyard.out" 2>"$SUT_DIR/hookyard.err") &
      SUT_MAIN=$!
      track "$SUT_MAIN"
      wait_listening "$SUT_DIR/hookyard.out" "$SUT_MAIN" "hookyard run ($sc)"
      SUT_PIDS=("$SUT_MAIN")
      SUT_LOG="$SUT_DIR/hookyard.err"
      if [[ $tail == 1 ]]; then start_tail_tab; fi
      ;;
  esac
}

# start_tail_tab: the browser tab of hookyard-1-tail, on LOAD_CPU (its CPU is not the gateway's).
TAB_PID=""
start_tail_tab() {
  [[ $ADMIN_KEY == 1 ]] || die "hookyard-1-tail needs a hookyard with the admin: config key"
  command -v node >/dev/null && [[ -d "$ROOT/tests/console/node_modules/playwright-core" ]] \
    || die "hookyard-1-tail needs node and playwright-core: run bash scripts/browser.sh"
  taskset -c "$LOAD_CPU" node "$BENCH_DIR/e2e/tail_tab.mjs" "http://127.0.0.1:$ADMIN_PORT/console/" \
    bench-admin-token >"$SUT_DIR/tab.out" 2>"$SUT_DIR/tab.err" &
  TAB_PID=$!
  track "$TAB_PID"
  local i
  for ((i = 0; i < 150; i++)); do
    grep -q '^tailing' "$SUT_DIR/tab.out" 2>/dev/null && break
    kill -0 "$TAB_PID" 2>/dev/null || die "the console tab exited: $(cat "$SUT_DIR/tab.err")"
    sleep 0.1
  done
  grep -q '^tailing' "$SUT_DIR/tab.out" || die "the console tab did not start tailing within 15 s"
  log "console tab tailing the event log (pid $TAB_PID, CPU $LOAD_CPU)"
}

stop_sut() {
  if [[ -n "$TAB_PID" ]]; then
    kill -TERM "$TAB_PID" 2>/dev/null || true
    wait "$TAB_PID" 2>/dev/null || true
    log "console tab: $(tail -n 1 "$SUT_DIR/tab.out")"
    TAB_PID=""
  fi
  if [[ -n "$SUT_MAIN" ]]; then stop_pid "$SUT_MAIN" "$1"; fi
  SUT_MAIN=""
}

# sanity SCENARIO: one signed request must be accepted and reach the sink
# FANOUT times; for hookyard a bad signature must be rejected.
sanity() {
  local sc=$1 before code
  before=$(sink_count)
  code=$(post "$URL")
  [[ "$code" == 2* ]] || die "$sc: signed POST $URL answered $code: $(head -c 300 "$WORK/last_response")"
  wait_sink_at_least $((before + FANOUT)) \
    || die "$sc: sink got $(($(sink_count) - before)) of $FANOUT deliveries for one request within 5 s"
  if [[ "$sc" == hookyard-* ]]; then
    code=$(post "$URL" "sha256=$(printf '0%.0s' {1..64})")
    [[ "$code" == 4* ]] || log "WARNING: $sc: a bad signature got HTTP $code (expected 4xx)"
  fi
}

# warn_lines FILE: number of log lines that look like warnings/errors/panics.
warn_lines() {
  local n=0
  if [[ -n "${1:-}" && -f "$1" ]]; then n=$(grep -ciE 'warn|error|panic' "$1" || true); fi
  echo "${n:-0}"
}

# measure ROUND SCENARIO: one warm-up + one measured wrk run; appends a row.
measure() {
  local round=$1 sc=$2
  start_sut "$sc" "$round"
  sanity "$sc"
  if ((WARMUP_S > 0)); then
    e2e_wrk "$URL" "$WARMUP_S" "$WORK/wrk-$sc-r$round-warmup.txt"
    drain
  fi
  kill -0 "$SINK_PID" 2>/dev/null || die "sink died"

  local out="$WORK/wrk-$sc-r$round.txt" c0 cpu0 scpu0 t0 t_wrk cpu1 scpu1 rss warns0 warns
  warns0=$(warn_lines "$SUT_LOG") # the sanity check's bad signature logs a warning
  c0=$(sink_count)
  cpu0=$(cpu_ticks "${SUT_PIDS[@]}")
  scpu0=$(cpu_ticks "$SINK_PID")
  local lb0 lt0 sb0 st0 lb1 lt1 sb1 st1
  read -r lb0 lt0 < <(cpu_busy "$LOAD_CPU")
  read -r sb0 st0 < <(cpu_busy "$SUT_CPU")
  now_us
  t0=$NOW_US
  e2e_wrk "$URL" "$DURATION_S" "$out"
  drain
  t_wrk=$DRAIN_START_US
  cpu1=$(cpu_ticks "${SUT_PIDS[@]}")
  scpu1=$(cpu_ticks "$SINK_PID")
  read -r lb1 lt1 < <(cpu_busy "$LOAD_CPU")
  read -r sb1 st1 < <(cpu_busy "$SUT_CPU")
  rss=$(hwm_kb "${SUT_PIDS[@]}")
  warns=$(($(warn_lines "$SUT_LOG") - warns0))
  stop_sut "$sc"
  # the event store can reach hundreds of MB per run; keep only the logs
  if [[ -n "$SUT_DIR" ]]; then rm -rf "$SUT_DIR/data"; fi

  local kv
  kv=$(sed -n 's/^E2E_RESULT //p' "$out")
  # round scenario fanout delivered wall_us drain_us drain_timeout sut_ticks sink_ticks
  # sut_hwm_kb log_warn load_cpu_busy load_cpu_total sut_cpu_busy sut_cpu_total "wrk k=v ..."
  printf '%s\t' "$round" "$sc" "$FANOUT" \
    $((DRAIN_COUNT - c0)) $((DRAIN_AT_US - t0)) $((DRAIN_AT_US - t_wrk)) "$DRAIN_TIMEOUT" \
    $((cpu1 - cpu0)) $((scpu1 - scpu0)) "$rss" "$warns" \
    $((lb1 - lb0)) $((lt1 - lt0)) $((sb1 - sb0)) $((st1 - st0)) >>"$ROWS"
  printf '%s\n' "$kv" >>"$ROWS"
  python3 "$HERE/report.py" row "$CLK_TCK" "$(tail -n 1 "$ROWS")" >&2
}

# -------------------------------------------------------------------- main
log "rounds=$ROUNDS duration=${DURATION_S}s warmup=${WARMUP_S}s connections=$CONNECTIONS" \
  "cpus: load=$LOAD_CPU sut=$SUT_CPU hookyard=$HOOKYARD"
start_sink
case " $SCENARIOS " in *" hookyard-1-otlp "*) start_otlp_sink ;; esac
case " $SCENARIOS " in *" hookyard-"*) check_hookyard_configs ;; esac
case " $SCENARIOS " in *" hookyard-1-transform "*) check_plugin ;; esac

for ((r = 1; r <= ROUNDS; r++)); do
  for sc in $SCENARIOS; do
    log "round $r/$ROUNDS: $sc"
    measure "$r" "$sc"
    sleep 1
  done
done

stop_pid "$SINK_PID" sink
if [[ -n "$OTLP_PID" ]]; then
  # a scenario that exported nothing measured nothing
  log "OTLP sink: $(SINK_ADDR=127.0.0.1:$OTLP_PORT sink_count) exports received"
  stop_pid "$OTLP_PID" "OTLP sink"
fi
sink_warns=$(warn_lines "$WORK/sink.err")

JSON="$RESULTS_DIR/e2e-$TS.json"
META=(
  "timestamp=$TS"
  "rounds=$ROUNDS" "duration_s=$DURATION_S" "warmup_s=$WARMUP_S" "connections=$CONNECTIONS"
  "load_cpu=$LOAD_CPU" "sut_cpu=$SUT_CPU" "clk_tck=$CLK_TCK" "body_bytes=$BODY_BYTES"
  "drain_max_s=$DRAIN_MAX" "drain_stable_ms=$DRAIN_STABLE_MS" "sink_log_warn=$sink_warns"
  "hookyard=$HOOKYARD"
  "storage_sync=${STORAGE_SYNC:-default}"
  "transform_plugin=${PLUGIN#"$ROOT"/}"
  "hookyard_version=$(timeout 5 "$HOOKYARD" --version 2>/dev/null | head -n 1 || true)"
  "hookyard_built=$(date -u -r "$HOOKYARD" +%Y-%m-%dT%H:%M:%SZ)"
  "nginx_version=$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')"
  "store_fs=$(df -PT "$WORK" | awk 'NR == 2 { print $2 }')"
)
mapfile -t -O "${#META[@]}" META < <(run_meta)
python3 "$HERE/report.py" summary "$ROWS" "$JSON" "${META[@]}"
log "results written to ${JSON#"$ROOT"/}"
