#!/usr/bin/env bash
# The streaming mode of issue 21: STREAMS concurrent SSE streams (upstream: 50 chunks, 20 ms apart, from `pgw simulate`)
# held open for the whole run, closed loop (pgw-loadgen --streams), against the simulator directly, a plain YARP proxy
# and the gateway (request log on, as shipped), in round-robin rounds. Per target: SSE events delivered per second,
# CPU per event of the front process (from /proc/PID/stat), time to first byte (p50, p99, and added over direct in the
# same round), each stream's duration, and memory per stream: (peak RSS − RSS when idle after start) ÷ STREAMS.
# Everything binds to 127.0.0.1; every run is bounded by its duration.
# Usage: [STREAMS=5000] [ROUNDS=3] [WARMUP=30] benchmarks/http/stream.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-20}"
STREAMS="${STREAMS:-5000}"
ROUNDS="${ROUNDS:-3}"
WARMUP="${WARMUP:-30}"
SIM_PORT=18181 GW_PORT=18180 YARP_PORT=18183
LOG_DIR=$(mktemp -d)
. benchmarks/http/common.sh
build_front_processes
require_free_ports $SIM_PORT $GW_PORT $YARP_PORT
ulimit -n 65536 2>/dev/null || true

"$PGW" simulate --urls "http://127.0.0.1:$SIM_PORT" --token-delay-ms 20 --completion-words 50 >/dev/null 2>&1 & SIM=$!
PGW_Gateway__RequestLog__Path="$LOG_DIR/gateway.db" "$PGW" serve --urls "http://127.0.0.1:$GW_PORT" \
  --config benchmarks/http/gateway-over-streaming-simulator.json >/dev/null 2>&1 & GW=$!
"$YARP" --urls "http://127.0.0.1:$YARP_PORT" --upstream "http://127.0.0.1:$SIM_PORT" >/dev/null 2>&1 & YARP_PID=$!
trap 'kill $SIM $GW $YARP_PID 2>/dev/null; wait 2>/dev/null; rm -rf "$LOG_DIR"' EXIT
wait_for_servers "$SIM_PORT $GW_PORT $YARP_PORT" "$SIM $GW $YARP_PID"
sleep 2
rss_now() { awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }
rss_peak() { awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }
declare -A URL=([direct]="http://127.0.0.1:$SIM_PORT/v1/chat/completions" [yarp]="http://127.0.0.1:$YARP_PORT/v1/chat/completions" [gateway]="http://127.0.0.1:$GW_PORT/v1/chat/completions")
declare -A PID=([direct]=$SIM [yarp]=$YARP_PID [gateway]=$GW)
declare -A IDLE=([direct]=$(rss_now $SIM) [yarp]=$(rss_now $YARP_PID) [gateway]=$(rss_now $GW))
declare -A NAME=([direct]="direct to simulator" [yarp]="YARP proxy" [gateway]="through the gateway")
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
field() { sed -E "s/.*$1 ([0-9.]+).*/\1/"; }
declare -A EPS CPU FB50 FB99
echo "$STREAMS streams, 50 chunks 20 ms apart upstream, $DURATION s per target per round (after a 5 s warm-up of each)"
# Once, before the rounds: tiered compilation of the proxies' code under this load settles after ~30 s (the 5 s of
# each round left the gateway's first round still compiling in the first runs).
if [ "$WARMUP" -gt 0 ]; then
  echo "warm-up: $WARMUP s of the same load on YARP and on the gateway (not measured)"
  for t in yarp gateway; do "$LOADGEN" "${URL[$t]}" --streams "$STREAMS" --seconds "$WARMUP" --warmup 0 >/dev/null; done
fi
for round in $(seq 1 "$ROUNDS"); do
  for t in direct yarp gateway; do
    c0=$(ticks "${PID[$t]}")
    line=$("$LOADGEN" "${URL[$t]}" --streams "$STREAMS" --seconds "$DURATION" --warmup 5)
    c1=$(ticks "${PID[$t]}")
    events=$(sed -E 's/.*events ([0-9]+) .*/\1/' <<<"$line")
    eps=$(sed -E 's/.*events [0-9]+ \(([0-9]+)\/s\).*/\1/' <<<"$line")
    # CPU spent over the warm-up and the run, per event of the run scaled to both (the rate is steady by then).
    cpu=$(awk -v d=$((c1 - c0)) -v t=$TICK_US -v e="$events" -v s="$DURATION" 'BEGIN {printf "%.2f", d * t / (e * (s + 5) / s)}')
    EPS[$t]+="$eps "; CPU[$t]+="$cpu "
    FB50[$t$round]=$(field "first byte p50" <<<"$line"); FB99[$t$round]=$(field "p99" <<<"$line")
    printf '  round %s %-20s %s; CPU/event %s us\n' "$round" "${NAME[$t]}" "$line" "$cpu"
  done
done
echo "medians over $ROUNDS rounds:"
for t in direct yarp gateway; do
  added50=""; added99=""
  for round in $(seq 1 "$ROUNDS"); do
    added50+="$(awk -v a="${FB50[$t$round]}" -v d="${FB50[direct$round]}" 'BEGIN {printf "%.3f", a - d}') "
    added99+="$(awk -v a="${FB99[$t$round]}" -v d="${FB99[direct$round]}" 'BEGIN {printf "%.3f", a - d}') "
  done
  peak=$(rss_peak "${PID[$t]}")
  printf '  %-20s %8s events/s, CPU/event %6s us, added first byte p50 %s ms / p99 %s ms, peak RSS %s MiB (idle %s), %s KiB per stream\n' \
    "${NAME[$t]}" "$(median <<<"${EPS[$t]}")" "$(median <<<"${CPU[$t]}")" "$(median <<<"$added50")" "$(median <<<"$added99")" \
    "$peak" "${IDLE[$t]}" "$(awk -v p="$peak" -v i="${IDLE[$t]}" -v n="$STREAMS" 'BEGIN {printf "%.1f", (p - i) * 1024 / n}')"
done
