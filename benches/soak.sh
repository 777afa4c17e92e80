#!/usr/bin/env bash
# Soak: natter holds many MQTT connections for a long time under a trickle of chat messages,
# while its resident memory and open file descriptors are sampled into a CSV. See
# benches/README.md ("Soak").
#
#   benches/soak.sh                               10,000 connections for 30 minutes
#   benches/soak.sh --clients 10000 --minutes 3   a short check
#
# Options:
#   --clients N         connections held (default 10000)
#   --minutes M         how long they are held once all are up (default 30; fractions allowed)
#   --rate R            chat messages per second among them, all together (default 3)
#   --sample-secs S     seconds between samples (default 60)
#   --natter-bin PATH   use this natter binary instead of target/release/natter
#   --no-build          use the binaries already in the target directory
#   --out DIR           where results go (default: bench-results/soak-YYYYmmdd-HHMMSS)
#
# It starts its own natter (release build) on free loopback ports with a fresh data directory in
# a temporary folder, stops it when done, and exits non-zero if natter died or a connection was
# lost.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

CLIENTS=10000
MINUTES=30
RATE=3
SAMPLE_SECS=60
NATTER_BIN=
BUILD=1
OUT=

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
say() { echo "soak.sh: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --clients) CLIENTS=${2:?--clients needs a number}; shift ;;
    --minutes) MINUTES=${2:?--minutes needs a number}; shift ;;
    --rate) RATE=${2:?--rate needs a number}; shift ;;
    --sample-secs) SAMPLE_SECS=${2:?--sample-secs needs a number}; shift ;;
    --natter-bin) NATTER_BIN=${2:?--natter-bin needs a path}; shift ;;
    --no-build) BUILD=0 ;;
    --out) OUT=${2:?--out needs a directory}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) say "unknown option $1"; usage >&2; exit 2 ;;
  esac
  shift
done

[ -r /proc/self/status ] || { say "needs Linux (/proc)"; exit 2; }

# Each connection is one descriptor in the load generator and one in natter (separate
# processes): raise the soft limit as far as the hard limit allows, as compare.sh does.
NEED_FDS=$((CLIENTS + 1000))
HARD=$(ulimit -Hn)
if [ "$HARD" = unlimited ] || [ "$HARD" -ge 65536 ]; then WANT=65536; else WANT=$HARD; fi
[ "$WANT" -ge "$NEED_FDS" ] || WANT=$NEED_FDS
ulimit -n "$WANT" 2>/dev/null || ulimit -n "$HARD" 2>/dev/null || true
FDS=$(ulimit -n)
if [ "$FDS" -lt "$NEED_FDS" ]; then
  say "only $FDS file descriptors allowed (ulimit -n, hard limit $HARD); $CLIENTS connections need $NEED_FDS"
  exit 2
fi

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "$BUILD" = 1 ]; then
  if [ -z "$NATTER_BIN" ]; then
    say "building natter (release)"
    cargo build --release -p natter --bin natter || { say "natter does not build"; exit 1; }
  fi
  say "building loadgen (release)"
  cargo build --release -p loadgen --bin loadgen || { say "loadgen does not build"; exit 1; }
fi
LOADGEN=$TARGET/release/loadgen
NATTER=${NATTER_BIN:-$TARGET/release/natter}
for bin in "$LOADGEN" "$NATTER"; do
  [ -x "$bin" ] || { say "$bin is missing (run without --no-build, or pass --natter-bin)"; exit 2; }
done

STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=${OUT:-bench-results/soak-$STAMP}
mkdir -p "$OUT"
RUNTMP=$(mktemp -d "${TMPDIR:-/tmp}/natter-soak.XXXXXX")
NATTER_PID=

# stop_natter: SIGTERM, then SIGKILL after 5 s.
stop_natter() {
  [ -n "$NATTER_PID" ] || return 0
  kill "$NATTER_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$NATTER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$NATTER_PID" 2>/dev/null || true
  wait "$NATTER_PID" 2>/dev/null || true
  NATTER_PID=
}
cleanup() {
  stop_natter
  rm -rf "$RUNTMP"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# natter as in compare.sh's chat column: no $SYS, no publish rate limit; accounts registered over
# HTTP with cheap password hashes and no login limit per address (every client is on 127.0.0.1).
{ read -r MQTT_PORT; read -r HTTP_PORT; } < <("$LOADGEN" free-port 2)
say "natter on 127.0.0.1:$MQTT_PORT (HTTP $HTTP_PORT), data in $RUNTMP/data, log $OUT/natter.log"
env NATTER_MQTT_SYS_INTERVAL_SECS=0 NATTER_LOG_LEVEL=warn NATTER_LIMITS_PUBLISH_RATE=0 \
  NATTER_AUTH_PBKDF2_ITERATIONS=1000 NATTER_HTTP_LOGIN_ATTEMPTS_PER_MINUTE=1000000 \
  "$NATTER" serve --mqtt "127.0.0.1:$MQTT_PORT" --ws '' --http "127.0.0.1:$HTTP_PORT" \
  --data-dir "$RUNTMP/data" >"$OUT/natter.log" 2>&1 &
NATTER_PID=$!
if ! "$LOADGEN" wait-port "127.0.0.1:$MQTT_PORT" --timeout 15; then
  say "natter did not start; the end of its log:"
  tail -n 20 "$OUT/natter.log" >&2
  exit 1
fi

DURATION=$(awk -v m="$MINUTES" 'BEGIN { printf "%.0f", m * 60 }')
say "$CLIENTS connections for $MINUTES min, $RATE msg/s, a sample every $SAMPLE_SECS s into $OUT/soak.csv"
status=0
"$LOADGEN" soak --addr "127.0.0.1:$MQTT_PORT" --http "127.0.0.1:$HTTP_PORT" --pid "$NATTER_PID" \
  --clients "$CLIENTS" --duration "$DURATION" --rate "$RATE" --sample-every "$SAMPLE_SECS" \
  --csv "$OUT/soak.csv" || status=$?
if ! kill -0 "$NATTER_PID" 2>/dev/null; then
  say "natter exited during the soak; the end of its log:"
  tail -n 20 "$OUT/natter.log" >&2
  status=1
fi
stop_natter

# The curve as a Markdown table (for RESULTS.md).
awk -F, 'NR == 1 { print "| elapsed | phase | connections | RSS (MiB) | fds | sent | acked | received | lost |";
                   print "|---|---|---|---|---|---|---|---|---|"; next }
         { printf "| %d:%02d | %s | %d | %.1f | %d | %d | %d | %d | %d |\n", $1 / 60, $1 % 60, $2, $3, $4 / 1024, $5, $6, $7, $8, $9 }' \
  "$OUT/soak.csv" >"$OUT/soak.md" 2>/dev/null || true
cat "$OUT/soak.md"
[ "$status" = 0 ] && say "done: $OUT/soak.csv, $OUT/soak.md" || say "failed (status $status); see $OUT"
exit "$status"
