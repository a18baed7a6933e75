#!/usr/bin/env bash
# The request log's CPU per request at saturation, paired: two `pgw serve` of the same build over one simulator, one
# with the request log (as shipped) and one with --no-log, saturated AT THE SAME TIME by two wrk runs (CONNECTIONS
# each), so whatever disturbs this shared VM during a round disturbs both alike (rounds taken one after the other
# differ by up to ±15 µs per request on this host, more than the 5 µs target; see docs/benchmarks.md). Each round
# prints both gateways' CPU per request (from /proc/PID/stat) and the difference; the result is the median of the
# rounds' differences. Everything binds to 127.0.0.1; every run is bounded by its duration.
# Usage: [ROUNDS=9] [CONNECTIONS=32] benchmarks/http/log-ab.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-10}"
ROUNDS="${ROUNDS:-9}"
CONNECTIONS="${CONNECTIONS:-32}"
SIM_PORT=18201 LOG_PORT=18202 NOLOG_PORT=18203
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
dotnet build -c Release src/PipelineGateway.Cli >/dev/null
PGW=src/PipelineGateway.Cli/bin/Release/net10.0/pgw
. benchmarks/http/common.sh
require_free_ports $SIM_PORT $LOG_PORT $NOLOG_PORT
ulimit -n 65536 2>/dev/null || true
CFG=$(mktemp); LOG_DIR=$(mktemp -d)
sed "s/127.0.0.1:18181/127.0.0.1:$SIM_PORT/" benchmarks/http/gateway-over-simulator.json >"$CFG"

"$PGW" simulate --urls "http://127.0.0.1:$SIM_PORT" >/dev/null 2>&1 & SIM=$!
PGW_Gateway__RequestLog__Path="$LOG_DIR/gateway.db" "$PGW" serve --urls "http://127.0.0.1:$LOG_PORT" --config "$CFG" >/dev/null 2>&1 & GL=$!
"$PGW" serve --urls "http://127.0.0.1:$NOLOG_PORT" --config "$CFG" --no-log >/dev/null 2>&1 & GN=$!
OUT_L=$(mktemp); OUT_N=$(mktemp)
trap 'kill $SIM $GL $GN 2>/dev/null; wait 2>/dev/null; rm -rf "$CFG" "$OUT_L" "$OUT_N" "$LOG_DIR"' EXIT
wait_for_servers "$SIM_PORT $LOG_PORT $NOLOG_PORT" "$SIM $GL $GN"
URL_L="http://127.0.0.1:$LOG_PORT/v1/chat/completions"
URL_N="http://127.0.0.1:$NOLOG_PORT/v1/chat/completions"

echo "warm-up (both at once, 20 s: tiered compilation finishes its optimized code first)"
wrk -t1 -c"$CONNECTIONS" -d20s -s benchmarks/http/post-chat.lua "$URL_L" >/dev/null & W1=$!
wrk -t1 -c"$CONNECTIONS" -d20s -s benchmarks/http/post-chat.lua "$URL_N" >/dev/null & W2=$!
wait $W1 $W2

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
requests() { awk '/requests in/ {print $1}' "$1"; }
DIFFS=""; LOGS=""; NOLOGS=""
for round in $(seq 1 "$ROUNDS"); do
  l0=$(ticks $GL); n0=$(ticks $GN)
  wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 30s -s benchmarks/http/post-chat.lua "$URL_L" >"$OUT_L" & W1=$!
  wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 30s -s benchmarks/http/post-chat.lua "$URL_N" >"$OUT_N" & W2=$!
  wait $W1 $W2
  l1=$(ticks $GL); n1=$(ticks $GN)
  rl=$(requests "$OUT_L"); rn=$(requests "$OUT_N")
  line=$(awk -v dl=$((l1 - l0)) -v dn=$((n1 - n0)) -v rl="$rl" -v rn="$rn" -v t=$TICK_US \
    'BEGIN {cl = dl * t / rl; cn = dn * t / rn; printf "%.1f %.1f %.1f %d %d", cl, cn, cl - cn, rl, rn}')
  read -r cl cn d rl rn <<<"$line"
  LOGS+="$cl "; NOLOGS+="$cn "; DIFFS+="$d "
  printf '  round %s  with the log %6s us/request (%s requests)   --no-log %6s us/request (%s requests)   difference %+.1f us\n' \
    "$round" "$cl" "$rl" "$cn" "$rn" "$d"
done
printf 'request log, %s connections each, %s rounds of %s s: %+.1f us CPU per request (median of the rounds'"'"' differences); medians %s with the log, %s without\n' \
  "$CONNECTIONS" "$ROUNDS" "$DURATION" "$(median <<<"$DIFFS")" "$(median <<<"$LOGS")" "$(median <<<"$NOLOGS")"
echo "peak RSS: with the log $(awk '/VmHWM/ {printf "%d", $2 / 1024}' /proc/$GL/status) MiB, --no-log $(awk '/VmHWM/ {printf "%d", $2 / 1024}' /proc/$GN/status) MiB"
