#!/usr/bin/env bash
# Bytes allocated per request by the gateway (as shipped, request log on) and by a plain YARP proxy, behind one
# simulator, each saturated alone by wrk (CONNECTIONS, after WARMUP s): the process's allocation rate from the runtime's
# own counter (dotnet-counters, System.Runtime dotnet.gc.heap.total_allocated, median of 1 s samples) divided by the
# requests per second wrk measured over the same 10 s; and thread-pool work items per request the same way
# (dotnet.thread_pool.work_item.count: each one a hand-off between threads). TRACE=1 also records the gateway's sampled allocation events
# (dotnet-trace, one event per ~100 KB with type and stack) and prints where they come from (pgw-alloctrace).
# TRACE_TYPE=NAME (with TRACE=1) also prints the stacks that allocate types whose name contains NAME.
# HOPS=1 also records both processes' thread-pool enqueues for 3 s each (FrameworkEventSource ThreadPoolEnqueueWork, with
# stacks) and prints where the hand-offs come from (pgw-alloctrace --enqueues): the work items per request, explained.
# Needs: wrk, and `dotnet tool install -g dotnet-counters` (and dotnet-trace for TRACE=1 or HOPS=1).
# SCRIPT=FILE posts another body (benchmarks/http/post-agent-step.lua: a coding agent's ~55 KB step).
# Usage: [CONNECTIONS=32] [WARMUP=35] [SCRIPT=post-chat.lua] [TRACE=0] [TRACE_TYPE=] [HOPS=0] [HOPS_FRAMES=7] benchmarks/http/alloc.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CONNECTIONS="${CONNECTIONS:-32}" WARMUP="${WARMUP:-35}" TRACE="${TRACE:-0}" HOPS="${HOPS:-0}"
SIM_PORT=18201 GW_PORT=18202 YARP_PORT=18203
TOOLS="$HOME/.dotnet/tools"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
[ -x "$TOOLS/dotnet-counters" ] || { echo "dotnet-counters is needed: dotnet tool install -g dotnet-counters" >&2; exit 1; }
dotnet build -c Release src/PipelineGateway.Cli >/dev/null
dotnet build -c Release benchmarks/PipelineGateway.YarpProxy >/dev/null
if [ "$TRACE" = 1 ] || [ "$HOPS" = 1 ]; then dotnet build -c Release benchmarks/PipelineGateway.AllocTrace >/dev/null; fi
PGW=src/PipelineGateway.Cli/bin/Release/net10.0/pgw
YARP=benchmarks/PipelineGateway.YarpProxy/bin/Release/net10.0/pgw-yarp
. benchmarks/http/common.sh
require_free_ports $SIM_PORT $GW_PORT $YARP_PORT
CFG=$(mktemp); WORK=$(mktemp -d)
sed "s/127.0.0.1:18181/127.0.0.1:$SIM_PORT/" benchmarks/http/gateway-over-simulator.json >"$CFG"
"$PGW" simulate --urls "http://127.0.0.1:$SIM_PORT" >/dev/null 2>&1 & SIM=$!
PGW_Gateway__RequestLog__Path="$WORK/log.db" "$PGW" serve --urls "http://127.0.0.1:$GW_PORT" --config "$CFG" >/dev/null 2>&1 & GW=$!
"$YARP" --urls "http://127.0.0.1:$YARP_PORT" --upstream "http://127.0.0.1:$SIM_PORT" >/dev/null 2>&1 & YP=$!
trap 'kill $SIM $GW $YP 2>/dev/null; wait 2>/dev/null; rm -rf "$CFG" "$WORK"' EXIT
wait_for_servers "$SIM_PORT $GW_PORT $YARP_PORT" "$SIM $GW $YP"

load() { wrk -t1 -c"$CONNECTIONS" -d"$2s" --timeout 30s -s "${SCRIPT:-benchmarks/http/post-chat.lua}" "http://127.0.0.1:$1/v1/chat/completions"; }
for target in "gateway $GW $GW_PORT" "YARP $YP $YARP_PORT"; do
  set -- $target
  load "$3" "$WARMUP" >/dev/null
  "$TOOLS/dotnet-counters" collect -p "$2" --counters System.Runtime --format csv -o "$WORK/$1.csv" --refresh-interval 1 --duration 00:00:12 >/dev/null 2>&1 &
  counters=$!
  sleep 1
  load "$3" 10 >"$WORK/$1.wrk"
  wait $counters || true
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/$1.wrk")
  median() { grep "$1" "$WORK/$2.csv" | awk -F, '{print $NF}' | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
  bytes=$(median total_allocated "$1"); items=$(median thread_pool.work_item.count "$1")
  awk -v r="$rps" -v n="$1" -v m="$bytes" -v i="$items" 'BEGIN {printf "%-8s %8.0f req/s  %6.1f MB/s allocated  %6.0f B per request  %5.2f thread-pool work items per request\n", n, r, m / 1e6, m / r, i / r}'
done

if [ "$TRACE" = 1 ]; then
  [ -x "$TOOLS/dotnet-trace" ] || { echo "dotnet-trace is needed: dotnet tool install -g dotnet-trace" >&2; exit 1; }
  load $GW_PORT 12 >/dev/null & w=$!
  sleep 1
  "$TOOLS/dotnet-trace" collect -p $GW --providers Microsoft-Windows-DotNETRuntime:0x1:5 --duration 00:00:00:08 -o "$WORK/gateway.nettrace" >/dev/null 2>&1
  wait $w || true
  benchmarks/PipelineGateway.AllocTrace/bin/Release/net10.0/pgw-alloctrace "$WORK/gateway.nettrace" 25 ${TRACE_TYPE:-}
fi

if [ "$HOPS" = 1 ]; then
  [ -x "$TOOLS/dotnet-trace" ] || { echo "dotnet-trace is needed: dotnet tool install -g dotnet-trace" >&2; exit 1; }
  for target in "gateway $GW $GW_PORT" "YARP $YP $YARP_PORT"; do
    set -- $target
    load "$3" 6 >"$WORK/$1-hops.wrk" & w=$!
    sleep 1
    "$TOOLS/dotnet-trace" collect -p "$2" --providers "System.Diagnostics.Eventing.FrameworkEventSource:0x12:5" --duration 00:00:00:03 -o "$WORK/$1-hops.nettrace" >/dev/null 2>&1
    wait $w || true
    echo "-- $1: thread-pool hand-offs in 3 s at $(awk '/Requests\/sec/ {print $2}' "$WORK/$1-hops.wrk") req/s over 6 s (tracing slows it: compare shares)"
    benchmarks/PipelineGateway.AllocTrace/bin/Release/net10.0/pgw-alloctrace --enqueues "$WORK/$1-hops.nettrace" 8 "${HOPS_FRAMES:-7}"
  done
fi
