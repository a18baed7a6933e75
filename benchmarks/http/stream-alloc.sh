#!/usr/bin/env bash
# Bytes allocated per streamed SSE event by the gateway (as shipped, request log on) and by a plain YARP proxy, over one
# streaming simulator (50 chunks 20 ms apart), each held at 1,000 streams by pgw-loadgen (25 s warm-up, then 10 s): the
# runtime's allocation counter (dotnet-counters, median of 1 s samples) divided by the events per second delivered.
# TRACE=1 also prints where the gateway's sampled allocations come from (dotnet-trace, pgw-alloctrace; TRACE_TYPE=NAME).
# Needs `dotnet tool install -g dotnet-counters` (and dotnet-trace for TRACE=1). Binds only to 127.0.0.1.
# Usage: [TRACE=0] [TRACE_TYPE=] benchmarks/http/stream-alloc.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. benchmarks/http/common.sh
build_front_processes
require_free_ports 18181 18180 18184
dotnet build -c Release benchmarks/PipelineGateway.AllocTrace >/dev/null
TOOLS="$HOME/.dotnet/tools"
WORK=$(mktemp -d)
"$PGW" simulate --urls http://127.0.0.1:18181 --token-delay-ms 20 --completion-words 50 >/dev/null 2>&1 & SIM=$!
PGW_Gateway__RequestLog__Path="$WORK/a.db" "$PGW" serve --urls http://127.0.0.1:18180 --config benchmarks/http/gateway-over-streaming-simulator.json >/dev/null 2>&1 & GW=$!
"$YARP" --urls http://127.0.0.1:18184 --upstream http://127.0.0.1:18181 >/dev/null 2>&1 & YP=$!
trap 'kill $SIM $GW $YP 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
wait_for_servers "18181 18180 18184" "$SIM $GW $YP"
for t in "gateway $GW 18180" "YARP $YP 18184"; do
  set -- $t
  "$LOADGEN" "http://127.0.0.1:$3/v1/chat/completions" --streams 1000 --seconds 25 --warmup 0 >/dev/null
  "$TOOLS/dotnet-counters" collect -p "$2" --counters System.Runtime --format csv -o "$WORK/$1.csv" --refresh-interval 1 --duration 00:00:12 >/dev/null 2>&1 & c=$!
  sleep 1
  "$LOADGEN" "http://127.0.0.1:$3/v1/chat/completions" --streams 1000 --seconds 10 --warmup 0 >"$WORK/$1.out"
  wait $c || true
  ev=$(sed -E 's/.*events ([0-9]+) .*/\1/' "$WORK/$1.out")
  bytes=$(grep total_allocated "$WORK/$1.csv" | awk -F, '{print $NF}' | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
  awk -v e="$ev" -v m="$bytes" -v n="$1" 'BEGIN {printf "%-8s %8.0f events/s  %6.1f MB/s  %6.0f B per event\n", n, e/10, m/1e6, m/(e/10)}'
done
if [ "${TRACE:-0}" = 1 ]; then
  "$LOADGEN" http://127.0.0.1:18180/v1/chat/completions --streams 1000 --seconds 12 --warmup 0 >/dev/null & w=$!
  sleep 1
  "$TOOLS/dotnet-trace" collect -p $GW --providers Microsoft-Windows-DotNETRuntime:0x1:5 --duration 00:00:00:08 -o "$WORK/gw.nettrace" >/dev/null 2>&1
  wait $w || true
  benchmarks/PipelineGateway.AllocTrace/bin/Release/net10.0/pgw-alloctrace "$WORK/gw.nettrace" 30 ${TRACE_TYPE:-}
fi
