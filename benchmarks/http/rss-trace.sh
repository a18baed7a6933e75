#!/usr/bin/env bash
# Where the gateway's RSS goes under load, second by second: the gateway (as shipped, request log on; extra arguments go
# to `pgw serve`, e.g. --no-log) behind one simulator, saturated alone by wrk (CONNECTIONS) for SECONDS. Prints RSS each
# second, and from the runtime's own counters (dotnet-counters, System.Runtime) the GC's committed memory and the gen1
# and gen2 sizes after each collection, then the largest resident mappings at the end (anonymous memory, the JIT's
# double-mapped code, libraries). Only the shape and the same run's figures compare: this host's speed swings.
# TARGET=yarp traces the plain YARP proxy (benchmarks/PipelineGateway.YarpProxy) in the gateway's place, with the same
# load and the same runtime settings, for the same picture of the floor. ENV='VAR=value …' is set on the traced process.
# GC_TRACE=1 also traces the runtime's GC events through the run (dotnet-trace) and prints one line per collection
# (pgw-alloctrace --gc: generation, reason, heap count, sizes after, promoted).
# GCDUMP=N takes a dotnet-gcdump of the traced process N seconds into the load (the live heap and its types; the dump
# forces a full collection, so the RSS after that second no longer shows the run's own shape).
# LATENCY_MS and CONFIG give the slow-upstream mode of run.sh (LATENCY_MS=1000 CONNECTIONS=3000
# CONFIG=benchmarks/http/gateway-over-slow-simulator.json): the simulator answers after that delay.
# Needs: wrk, `dotnet tool install -g dotnet-counters` (and dotnet-trace for GC_TRACE).
# Usage: [CONNECTIONS=128] [TARGET=gateway|yarp] [ENV=] [GC_TRACE=1] [GCDUMP=seconds] [LATENCY_MS=0 CONFIG=…] benchmarks/http/rss-trace.sh [seconds] [pgw serve arguments…]
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-30}"; shift || true
CONNECTIONS="${CONNECTIONS:-128}"
SIM_PORT=18201 GW_PORT=18202
COUNTERS="$HOME/.dotnet/tools/dotnet-counters"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
[ -x "$COUNTERS" ] || { echo "dotnet-counters is needed: dotnet tool install -g dotnet-counters" >&2; exit 1; }
TARGET="${TARGET:-gateway}"
. benchmarks/http/common.sh
build_front_processes
[ "${GC_TRACE:-0}" = 1 ] && dotnet build -c Release benchmarks/PipelineGateway.AllocTrace >/dev/null
require_free_ports $SIM_PORT $GW_PORT
ulimit -n 65536 2>/dev/null || true
CFG=$(mktemp); WORK=$(mktemp -d)
sed "s/127.0.0.1:18181/127.0.0.1:$SIM_PORT/" "${CONFIG:-benchmarks/http/gateway-over-simulator.json}" >"$CFG"
"$PGW" simulate --urls "http://127.0.0.1:$SIM_PORT" --latency-ms "${LATENCY_MS:-0}" >/dev/null 2>&1 & SIM=$!
if [ "$TARGET" = yarp ]; then
  env ${ENV:-} "$YARP" --urls "http://127.0.0.1:$GW_PORT" --upstream "http://127.0.0.1:$SIM_PORT" >/dev/null 2>&1 & GW=$!
else
  env ${ENV:-} PGW_Gateway__RequestLog__Path="$WORK/log.db" "$PGW" serve --urls "http://127.0.0.1:$GW_PORT" --config "$CFG" "$@" >/dev/null 2>&1 & GW=$!
fi
trap 'kill $SIM $GW 2>/dev/null; wait 2>/dev/null; rm -rf "$CFG" "$WORK"' EXIT
wait_for_servers "$SIM_PORT $GW_PORT" "$SIM $GW"

rss() { awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$GW/status"; }
echo "idle RSS $(rss) MiB"
# hh:mm:ss for dotnet-counters, dd:hh:mm:ss for dotnet-trace: "00:00:60" is not a time span, and with 60 s or more
# both tools failed at once and the script printed no counters and no GC trace.
SPAN=$(printf '%02d:%02d:%02d' $((DURATION / 3600)) $((DURATION % 3600 / 60)) $((DURATION % 60)))
"$COUNTERS" collect -p $GW --refresh-interval 1 --format csv -o "$WORK/counters.csv" --duration "$SPAN" \
  --counters System.Runtime >/dev/null 2>&1 & CTR=$!
if [ "${GC_TRACE:-0}" = 1 ]; then
  "$HOME/.dotnet/tools/dotnet-trace" collect -p $GW --providers Microsoft-Windows-DotNETRuntime:0x1:4 -o "$WORK/gc.nettrace" \
    --duration "00:$SPAN" >/dev/null 2>&1 & TRC=$!
fi
wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 30s -s benchmarks/http/post-chat.lua "http://127.0.0.1:$GW_PORT/v1/chat/completions" >"$WORK/wrk.txt" & W=$!
SERIES=""; SECOND=0
while kill -0 $W 2>/dev/null; do
  SERIES+=" $(rss)"; sleep 1; SECOND=$((SECOND + 1))
  if [ "$SECOND" = "${GCDUMP:-}" ]; then
    "$HOME/.dotnet/tools/dotnet-gcdump" collect -p $GW -o "$WORK/live.gcdump" >/dev/null 2>&1 || echo "dotnet-gcdump failed (dotnet tool install -g dotnet-gcdump)" >&2
  fi
done
wait $W; wait $CTR || true
echo "RSS each second (MiB):$SERIES"
echo "peak RSS $(awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/$GW/status") MiB; $(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt") req/s"
series() { grep -F "$1" "$WORK/counters.csv" | awk -F, '{printf "%d ", $NF / 1048576}'; }
echo "GC committed (MiB):   $(series 'memory.committed_size')"
echo "gen1 after a GC (MiB): $(series 'heap.size (By)[gc.heap.generation=gen1]')"
echo "gen2 after a GC (MiB): $(series 'heap.size (By)[gc.heap.generation=gen2]')"
total() { grep -F "$1" "$WORK/counters.csv" | awk -F, '{n += $NF} END {printf "%.0f", n}'; }
echo "collections: gen0 $(total 'collections ({collection} / 1 sec)[gc.heap.generation=gen0]'), gen1 $(total '[gc.heap.generation=gen1],Rate'), gen2 $(total '[gc.heap.generation=gen2],Rate'); allocated $(total 'total_allocated' | awk '{printf "%.0f", $1 / 1048576}') MiB"
echo "largest resident mappings at the end:"
awk '/^[0-9a-f]+-[0-9a-f]+ / {name = (NF > 5 ? $6 : "[anon]"); sub(/.*\//, "", name)} /^Rss:/ {rss[name] += $2}
  END {for (n in rss) printf "%8d KiB  %s\n", rss[n], n}' "/proc/$GW/smaps" | sort -rn | head -8 || true
if [ -f "$WORK/live.gcdump" ]; then
  echo "live objects ${GCDUMP} s into the load (dotnet-gcdump report: the live heap's total, then types by size class):"
  "$HOME/.dotnet/tools/dotnet-gcdump" report "$WORK/live.gcdump" | head -30
fi
if [ "${GC_TRACE:-0}" = 1 ]; then
  wait $TRC || true
  echo "collections (GC events):"
  benchmarks/PipelineGateway.AllocTrace/bin/Release/net10.0/pgw-alloctrace --gc "$WORK/gc.nettrace"
fi
