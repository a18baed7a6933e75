#!/usr/bin/env bash
# Streaming, paired: two front processes over one streaming simulator (50 chunks, TOKEN_DELAY_MS apart: 20), each held at STREAMS
# concurrent SSE streams by its own pgw-loadgen AT THE SAME TIME, so whatever disturbs this shared VM during a round
# disturbs both alike (stream.sh's round-robin rounds moved by ±15% in CPU per event between runs on 2026-12-03).
# Each round prints both processes' CPU per SSE event (from /proc/PID/stat), events delivered and the p50 time to a
# stream's first byte; the end prints the
# medians of the rounds' ratios and each process's memory per stream: (peak RSS − RSS when idle after start) ÷ STREAMS.
# Everything binds to 127.0.0.1; every run is bounded by its duration.
#
#   PAIR=yarp    the gateway as shipped (request log on)  vs  a plain YARP proxy (pgw-yarp)   — issue 21's streaming target
#   PAIR=build   the gateway as shipped                   vs  another build of it, B_BUILD=DIR (a copy of an earlier
#                                                             src/PipelineGateway.Cli/bin/Release/net10.0)
#   PAIR=env     the gateway as shipped                   vs  the same with B_ENV='NAME=value …' in its environment
#                                                             (a setting: PGW_Gateway__Server__InlineScheduling=true)
#
# PERF=1 also records both processes with `perf record -g` during the last round and prints CPU samples per 1,000
# events grouped by assembly (perf-group.py), A against B, largest difference first; KEEP=DIR keeps the recordings
# (a.perf, b.perf) for `perf report`.
#
# Usage: [PAIR=yarp|build|env] [B_BUILD=DIR] [B_ENV=] [SIM_ARGS=] [STREAMS=1000] [ROUNDS=5] [WARMUP=60] [TOKEN_DELAY_MS=20] [PERF=0] [KEEP=DIR] benchmarks/http/stream-paired.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-15}"
PAIR="${PAIR:-yarp}"
STREAMS="${STREAMS:-1000}"
ROUNDS="${ROUNDS:-5}"
WARMUP="${WARMUP:-60}" # the gateway's JIT still compiles after 30 s with both sides loaded (docs/benchmarks.md, seventh session)
SIM_PORT=18181 A_PORT=18180 B_PORT=18184
. benchmarks/http/common.sh
build_front_processes
require_free_ports $SIM_PORT $A_PORT $B_PORT
ulimit -n 65536 2>/dev/null || true
LOG_DIR=$(mktemp -d); OUT_A=$(mktemp); OUT_B=$(mktemp)
CONFIG=benchmarks/http/gateway-over-streaming-simulator.json
PERF="${PERF:-0}"
if [ "$PERF" = 1 ]; then
  command -v perf >/dev/null || { echo "PERF=1 needs perf (linux-perf)" >&2; exit 1; }
  export DOTNET_PerfMapEnabled=1 DOTNET_EnableWriteXorExecute=0 # JIT frames named through the runtime's perf map
fi

# SIM_ARGS adds simulator options: SIM_ARGS=--openai-extras sends events as OpenAI does (service_tier,
# system_fingerprint, obfuscation padding), members the gateway does not model.
"$PGW" simulate --urls "http://127.0.0.1:$SIM_PORT" --token-delay-ms "${TOKEN_DELAY_MS:-20}" --completion-words 50 ${SIM_ARGS:-} >/dev/null 2>&1 & SIM=$!
PGW_Gateway__RequestLog__Path="$LOG_DIR/a.db" "$PGW" serve --urls "http://127.0.0.1:$A_PORT" --config "$CONFIG" >/dev/null 2>&1 & A=$!
A_NAME="gateway"
case "$PAIR" in
  yarp) "$YARP" --urls "http://127.0.0.1:$B_PORT" --upstream "http://127.0.0.1:$SIM_PORT" >/dev/null 2>&1 & B=$!; B_NAME="YARP";;
  build) [ -x "${B_BUILD:-}/pgw" ] || { echo "PAIR=build needs B_BUILD=DIR holding a pgw build" >&2; exit 2; }
      PGW_Gateway__RequestLog__Path="$LOG_DIR/b.db" "$B_BUILD/pgw" serve --urls "http://127.0.0.1:$B_PORT" --config "$CONFIG" >/dev/null 2>&1 & B=$!
      A_NAME="this build"; B_NAME="$(basename "$B_BUILD")";;
  env) [ -n "${B_ENV:-}" ] || { echo "PAIR=env needs B_ENV='NAME=value …'" >&2; exit 2; }
      # shellcheck disable=SC2086 # B_ENV is a list of NAME=value words
      env PGW_Gateway__RequestLog__Path="$LOG_DIR/b.db" $B_ENV "$PGW" serve --urls "http://127.0.0.1:$B_PORT" --config "$CONFIG" >/dev/null 2>&1 & B=$!
      A_NAME="as shipped"; B_NAME="$B_ENV";;
  *) echo "PAIR is yarp, build or env" >&2; exit 2;;
esac
trap 'kill $SIM $A $B 2>/dev/null; wait 2>/dev/null; rm -rf "$LOG_DIR" "$OUT_A" "$OUT_B"' EXIT
unset DOTNET_PerfMapEnabled DOTNET_EnableWriteXorExecute # the load generators are not profiled
wait_for_servers "$SIM_PORT $A_PORT $B_PORT" "$SIM $A $B"
sleep 2
rss_now() { awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }
rss_peak() { awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }
IDLE_A=$(rss_now $A); IDLE_B=$(rss_now $B)
URL_A="http://127.0.0.1:$A_PORT/v1/chat/completions"
URL_B="http://127.0.0.1:$B_PORT/v1/chat/completions"

load_both() { # seconds
  "$LOADGEN" "$URL_A" --streams "$STREAMS" --seconds "$1" --warmup 0 >"$OUT_A" & local l1=$!
  "$LOADGEN" "$URL_B" --streams "$STREAMS" --seconds "$1" --warmup 0 >"$OUT_B" & local l2=$!
  wait $l1 $l2
}
echo "$A_NAME vs $B_NAME: $STREAMS streams each, warm-up (both at once, $WARMUP s)"
load_both "$WARMUP"

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
events() { sed -E 's/.*events ([0-9]+) .*/\1/' "$1"; }
first_byte() { sed -E 's/.*first byte p50 ([0-9.]+) ms.*/\1/' "$1"; }
CPU_RATIOS="" EVENT_RATIOS="" CPU_A="" CPU_B="" FB_A="" FB_B=""
for round in $(seq 1 "$ROUNDS"); do
  a0=$(ticks $A); b0=$(ticks $B)
  if [ "$PERF" = 1 ] && [ "$round" = "$ROUNDS" ]; then
    PERF_DIR=${KEEP:-$LOG_DIR}; mkdir -p "$PERF_DIR"
    perf record -q -F 499 -g -p "$A" -o "$PERF_DIR/a.perf" -- sleep "$DURATION" 2>/dev/null & P1=$!
    perf record -q -F 499 -g -p "$B" -o "$PERF_DIR/b.perf" -- sleep "$DURATION" 2>/dev/null & P2=$!
  fi
  load_both "$DURATION"
  a1=$(ticks $A); b1=$(ticks $B)
  ea=$(events "$OUT_A"); eb=$(events "$OUT_B")
  ua=$(awk -v d=$((a1 - a0)) -v t=$TICK_US -v e="$ea" 'BEGIN {printf "%.2f", d * t / e}')
  ub=$(awk -v d=$((b1 - b0)) -v t=$TICK_US -v e="$eb" 'BEGIN {printf "%.2f", d * t / e}')
  cr=$(awk -v a="$ua" -v b="$ub" 'BEGIN {printf "%.3f", a / b}'); er=$(awk -v a="$ea" -v b="$eb" 'BEGIN {printf "%.3f", a / b}')
  fa=$(first_byte "$OUT_A"); fb=$(first_byte "$OUT_B")
  CPU_A+="$ua "; CPU_B+="$ub "; CPU_RATIOS+="$cr "; EVENT_RATIOS+="$er "; FB_A+="$fa "; FB_B+="$fb "
  printf '  round %s  %s %6s us/event (%s events, first byte p50 %s ms)   %s %6s us/event (%s events, first byte p50 %s ms)   %sx CPU per event, %sx events\n' \
    "$round" "$A_NAME" "$ua" "$ea" "$fa" "$B_NAME" "$ub" "$eb" "$fb" "$cr" "$er"
done
if [ "$PERF" = 1 ]; then
  wait $P1 $P2 2>/dev/null || true
  echo "last round, CPU samples (perf, 499 Hz) per 1,000 events: A = $A_NAME, B = $B_NAME"
  python3 benchmarks/http/perf-group.py "$PERF_DIR/a.perf" "$PERF_DIR/b.perf" "$ea" "$eb" 40
fi
PEAK_A=$(rss_peak $A); PEAK_B=$(rss_peak $B)
echo "$A_NAME vs $B_NAME, $STREAMS streams each, $ROUNDS rounds of $DURATION s: $(median <<<"$CPU_RATIOS")x its CPU per event, $(median <<<"$EVENT_RATIOS")x its events (medians of the rounds' ratios); medians $(median <<<"$CPU_A") and $(median <<<"$CPU_B") us"
echo "first byte p50 (from the request, at the load generator; medians of the rounds): $A_NAME $(median <<<"$FB_A") ms, $B_NAME $(median <<<"$FB_B") ms"
echo "memory per stream: $A_NAME $(( (PEAK_A - IDLE_A) * 1024 / STREAMS )) KiB (peak $PEAK_A MiB, idle $IDLE_A), $B_NAME $(( (PEAK_B - IDLE_B) * 1024 / STREAMS )) KiB (peak $PEAK_B MiB, idle $IDLE_B)"
