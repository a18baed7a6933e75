#!/usr/bin/env bash
# Two front processes over one simulator, saturated AT THE SAME TIME by two wrk runs (CONNECTIONS each), so whatever
# disturbs this shared VM during a round disturbs both alike: rounds taken one after the other differ by up to ±15 µs
# of CPU per request on this host, more than most changes (docs/benchmarks.md). Each round prints both processes' CPU
# per request (from /proc/PID/stat), requests served and the difference; the results are the medians of the rounds'
# differences and ratios. Everything binds to 127.0.0.1; every run is bounded by its duration.
#
#   PAIR=yarp         the gateway as shipped (request log on)  vs  a plain YARP proxy (pgw-yarp)   — issue 21's floor
#   PAIR=passthrough  the gateway as shipped                   vs  the same with Pipeline:PassThroughIdleStages off
#   PAIR=log          the gateway as shipped                   vs  the same with --no-log           — issue 22's cost
#   PAIR=build        the gateway as shipped                   vs  another build of it, B_BUILD=DIR (a copy of an
#                                                                  earlier src/PipelineGateway.Cli/bin/Release/net10.0)
#   PAIR=env          the gateway as shipped                   vs  the same with B_ENV='NAME=value …' in its environment
#                                                                  (a setting: PGW_Gateway__RequestLog__MaxBatch=256)
#
# A_ARGS='…' adds arguments to the gateway side's `pgw serve` (A_ARGS=--no-log: the gateway without its request log);
# A_ENV='NAME=value …' variables to its environment only (A_ENV=DOTNET_GCGen0MaxBudget=0x2000000 beside YARP as shipped — the name is case-sensitive);
# with PAIR=yarp, B_ENV='NAME=value …' likewise for YARP's side.
# GC_TRACE=1 traces the gateway side's GC events through the run (dotnet-trace; `dotnet tool install -g dotnet-trace`)
# and prints, at the end, its collections by heap count and every change of heap count (DATAS: 1 heap, or more under
# load), from pgw-alloctrace --gc; GC_TRACE=large also its allocations on the large object heap of 1 MB or more, with
# their stacks (pgw-alloctrace --large; the verbose level: a sampled allocation event every ~100 KB); GC_TRACE_OUT=FILE keeps its one line per collection (and FILE.rss its RSS each second). Either way the peak RSS of both
# is printed after the warm-up and each round as well as at the end.
# RATE=N loads each at a fixed rate instead (pgw-loadgen, open loop, 64 connections each) and adds both latencies.
#
# SCRIPT=FILE loads with another wrk script than benchmarks/http/post-chat.lua (a 100-byte request): post-agent.lua
# (a coding agent's ~55 KB step, the same body each time) or post-agent-step.lua (each request a new step of it).
# Usage: [PAIR=yarp|passthrough|log|build|env] [A_ARGS=] [A_ENV=] [B_BUILD=DIR] [B_ENV=] [ROUNDS=9] [CONNECTIONS=32] [RATE=] [WARMUP=40] [IDLE=] benchmarks/http/paired.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
SCRIPT="${SCRIPT:-benchmarks/http/post-chat.lua}"
DURATION="${1:-10}"
PAIR="${PAIR:-yarp}"
ROUNDS="${ROUNDS:-9}"
CONNECTIONS="${CONNECTIONS:-32}"
RATE="${RATE:-}"
WARMUP="${WARMUP:-40}" # tiered compilation of the gateway's code under load settles after ~30 s (dotnet-counters)
SIM_PORT=18201 A_PORT=18202 B_PORT=18203
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
dotnet build -c Release src/PipelineGateway.Cli >/dev/null
dotnet build -c Release benchmarks/PipelineGateway.YarpProxy >/dev/null
dotnet build -c Release benchmarks/PipelineGateway.LoadGen >/dev/null
LOADGEN=benchmarks/PipelineGateway.LoadGen/bin/Release/net10.0/pgw-loadgen
PGW="${A_BUILD:-src/PipelineGateway.Cli/bin/Release/net10.0}/pgw" # A_BUILD=DIR: the gateway side from another build
YARP=benchmarks/PipelineGateway.YarpProxy/bin/Release/net10.0/pgw-yarp
. benchmarks/http/common.sh
require_free_ports $SIM_PORT $A_PORT $B_PORT
ulimit -n 65536 2>/dev/null || true
CFG=$(mktemp); LOG_DIR=$(mktemp -d)
sed "s/127.0.0.1:18181/127.0.0.1:$SIM_PORT/" "${CONFIG:-benchmarks/http/gateway-over-simulator.json}" >"$CFG"

"$PGW" simulate --urls "http://127.0.0.1:$SIM_PORT" >/dev/null 2>&1 & SIM=$!
# shellcheck disable=SC2086 # A_ARGS and A_ENV are lists of words
env PGW_Gateway__RequestLog__Path="$LOG_DIR/a.db" ${A_ENV:-} "$PGW" serve --urls "http://127.0.0.1:$A_PORT" --config "$CFG" ${A_ARGS:-} >/dev/null 2>&1 & A=$!
A_NAME="gateway${A_ARGS:+ $A_ARGS}${A_ENV:+ $A_ENV}"
case "$PAIR" in
  # shellcheck disable=SC2086 # B_ENV is a list of NAME=value words
  yarp) env ${B_ENV:-} "$YARP" --urls "http://127.0.0.1:$B_PORT" --upstream "http://127.0.0.1:$SIM_PORT" >/dev/null 2>&1 & B=$!; B_NAME="YARP${B_ENV:+ $B_ENV}";;
  passthrough) PGW_Gateway__RequestLog__Path="$LOG_DIR/b.db" PGW_Gateway__Pipeline__PassThroughIdleStages=false \
      "$PGW" serve --urls "http://127.0.0.1:$B_PORT" --config "$CFG" >/dev/null 2>&1 & B=$!; B_NAME="no pass-through";;
  log) "$PGW" serve --urls "http://127.0.0.1:$B_PORT" --config "$CFG" --no-log >/dev/null 2>&1 & B=$!; A_NAME="with the log"; B_NAME="--no-log";;
  build) [ -x "${B_BUILD:-}/pgw" ] || { echo "PAIR=build needs B_BUILD=DIR holding a pgw build" >&2; exit 2; }
      PGW_Gateway__RequestLog__Path="$LOG_DIR/b.db" "$B_BUILD/pgw" serve --urls "http://127.0.0.1:$B_PORT" --config "$CFG" >/dev/null 2>&1 & B=$!
      A_NAME="this build"; B_NAME="$(basename "$B_BUILD")";;
  env) [ -n "${B_ENV:-}" ] || { echo "PAIR=env needs B_ENV='NAME=value …'" >&2; exit 2; }
      # shellcheck disable=SC2086 # B_ENV is a list of NAME=value words
      env PGW_Gateway__RequestLog__Path="$LOG_DIR/b.db" $B_ENV "$PGW" serve --urls "http://127.0.0.1:$B_PORT" --config "$CFG" >/dev/null 2>&1 & B=$!
      A_NAME="as shipped"; B_NAME="$B_ENV";;
  *) echo "PAIR is yarp, passthrough, log, build or env" >&2; exit 2;;
esac
OUT_A=$(mktemp); OUT_B=$(mktemp)
trap 'kill $SIM $A $B 2>/dev/null; wait 2>/dev/null; rm -rf "$CFG" "$OUT_A" "$OUT_B" "$LOG_DIR"' EXIT
wait_for_servers "$SIM_PORT $A_PORT $B_PORT" "$SIM $A $B"
URL_A="http://127.0.0.1:$A_PORT/v1/chat/completions"
if [ "${GC_TRACE:-0}" != 0 ]; then
  "$HOME/.dotnet/tools/dotnet-trace" collect -p $A --providers "Microsoft-Windows-DotNETRuntime:0x1:$([ "$GC_TRACE" = large ] && echo 5 || echo 4)" -o "$LOG_DIR/a-gc.nettrace" >/dev/null 2>&1 & TRC=$!
  while kill -0 $A 2>/dev/null; do echo "$(date +%s.%N | cut -c1-14) $(awk '/VmRSS/ {printf "%d", $2 / 1024}' /proc/$A/status 2>/dev/null)"; sleep 1; done >"$LOG_DIR/a-rss.txt" &
fi
URL_B="http://127.0.0.1:$B_PORT/v1/chat/completions"

# Which side's load generator starts first alternates by round: swapping two builds of the gateway showed the side
# started first ~2% cheaper per request when it always started first (docs/benchmarks.md, 2026-12-03 fifth session).
B_FIRST=0
load_one() { # url output seconds
  if [ -n "$RATE" ] && [ "$3" = "$DURATION" ]; then
    "$LOADGEN" "$1" --rate "$RATE" --seconds "$3" --warmup 0 >"$2"
  else
    wrk -t1 -c"$CONNECTIONS" -d"$3s" --timeout 30s -s "$SCRIPT" "$1" >"$2"
  fi
}
load_both() { # seconds: both loaded at once, each by its own wrk (or pgw-loadgen at RATE)
  local w1 w2
  if [ "$B_FIRST" = 1 ]; then
    load_one "$URL_B" "$OUT_B" "$1" & w2=$!
    load_one "$URL_A" "$OUT_A" "$1" & w1=$!
  else
    load_one "$URL_A" "$OUT_A" "$1" & w1=$!
    load_one "$URL_B" "$OUT_B" "$1" & w2=$!
  fi
  local rc=0
  wait $w1 || rc=$?
  wait $w2 || rc=$?
  [ "$rc" = 0 ] || [ -n "$RATE" ] || { echo "a load generator failed (exit $rc)" >&2; exit 1; }
}
peaks() { echo "$A_NAME $(awk '/VmHWM/ {printf "%d", $2 / 1024}' /proc/$A/status) MiB, $B_NAME $(awk '/VmHWM/ {printf "%d", $2 / 1024}' /proc/$B/status) MiB"; }
echo "$A_NAME vs $B_NAME: warm-up (both at once, $WARMUP s)"
load_both "$WARMUP"
echo "  peak RSS after the warm-up: $(peaks)"

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
requests() { if [ -n "$RATE" ]; then sed -E 's/.*sent ([0-9]+),.*/\1/' "$1"; else awk '/requests in/ {print $1}' "$1"; fi; }
latency() { [ -n "$RATE" ] && sed -E 's/.*(p50 [0-9.]+ ms), p90 [0-9.]+ ms, (p99 [0-9.]+ ms).*/ [\1, \2]/' "$1" || true; }
errors() { grep -E 'Non-2xx|Socket errors|errors [1-9]' "$1" | tr -s ' ' | tr '\n' ' ' | cut -c1-80 || true; }
DIFFS="" RATIOS="" SERVED="" CA_ALL="" CB_ALL=""
for round in $(seq 1 "$ROUNDS"); do
  B_FIRST=$((round % 2 == 0))
  [ -z "${IDLE:-}" ] || sleep "$IDLE" # IDLE=S: both idle S seconds before each round (run.sh leaves each target idle)
  a0=$(ticks $A); b0=$(ticks $B)
  load_both "$DURATION"
  a1=$(ticks $A); b1=$(ticks $B)
  ra=$(requests "$OUT_A"); rb=$(requests "$OUT_B")
  read -r ca cb d r s <<<"$(awk -v da=$((a1 - a0)) -v db=$((b1 - b0)) -v ra="$ra" -v rb="$rb" -v t=$TICK_US \
    'BEGIN {ca = da * t / ra; cb = db * t / rb; printf "%.1f %.1f %.1f %.3f %.3f", ca, cb, ca - cb, ca / cb, ra / rb}')"
  CA_ALL+="$ca "; CB_ALL+="$cb "; DIFFS+="$d "; RATIOS+="$r "; SERVED+="$s "
  printf '  round %s  %s %6s us/request (%s requests%s)   %s %6s us/request (%s requests%s)   %+.1f us, %.2fx CPU, %.2fx served %s%s[peak RSS so far %s]\n' \
    "$round" "$A_NAME" "$ca" "$ra" "$(latency "$OUT_A")" "$B_NAME" "$cb" "$rb" "$(latency "$OUT_B")" "$d" "$r" "$s" "$(errors "$OUT_A")" "$(errors "$OUT_B")" "$(peaks)"
done
printf '%s vs %s, %s connections each, %s rounds of %s s: %+.1f us CPU per request (median of the rounds'"'"' differences), %sx its CPU per request, %sx its requests served (medians of the rounds'"'"' ratios); medians %s and %s us\n' \
  "$A_NAME" "$B_NAME" "$CONNECTIONS" "$ROUNDS" "$DURATION" "$(median <<<"$DIFFS")" "$(median <<<"$RATIOS")" "$(median <<<"$SERVED")" \
  "$(median <<<"$CA_ALL")" "$(median <<<"$CB_ALL")"
echo "peak RSS: $(peaks)"
if [ "${GC_TRACE:-0}" != 0 ]; then
  kill $A; wait $TRC 2>/dev/null || true # the trace ends with its process
  benchmarks/PipelineGateway.AllocTrace/bin/Release/net10.0/pgw-alloctrace --gc "$LOG_DIR/a-gc.nettrace" >"$LOG_DIR/a-gc.txt" 2>&1
  echo "$A_NAME's collections by heap count: $(awk '$1 ~ /^[0-9.]+$/ {n[$5]++} END {for (h in n) printf "%s heap(s) %d  ", h, n[h]}' "$LOG_DIR/a-gc.txt")"
  awk '$1 ~ /^[0-9.]+$/ && $5 != last {print "  at " $1 " s: " $5 " heap(s) (collection " $2 ", gen" $3 ")"; last = $5}' "$LOG_DIR/a-gc.txt"
  if [ "$GC_TRACE" = large ]; then
    echo "$A_NAME's large objects of 1 MB or more (sampled):"
    benchmarks/PipelineGateway.AllocTrace/bin/Release/net10.0/pgw-alloctrace --large "$LOG_DIR/a-gc.nettrace" 2>&1 | head -200
  fi
  [ -z "${GC_TRACE_OUT:-}" ] || { cp "$LOG_DIR/a-gc.txt" "$GC_TRACE_OUT"; cp "$LOG_DIR/a-rss.txt" "$GC_TRACE_OUT.rss"; } # RSS: epoch s, MiB
fi
