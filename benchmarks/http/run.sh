#!/usr/bin/env bash
# HTTP load benchmark: the same load against the simulator directly and through the gateway, in one run:
# at saturation (wrk, fixed connections) and at a fixed rate (pgw-loadgen, open loop, 2,000 req/s by default).
# Everything binds to 127.0.0.1; every run is bounded by its duration. Usage: benchmarks/http/run.sh [seconds] [rate]
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-15}"
RATE="${2:-2000}"
SIM_PORT=18181
GW_PORT=18180
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }

dotnet build -c Release src/PipelineGateway.Cli >/dev/null
dotnet build -c Release benchmarks/PipelineGateway.LoadGen >/dev/null
PGW=src/PipelineGateway.Cli/bin/Release/net10.0/pgw
LOADGEN=benchmarks/PipelineGateway.LoadGen/bin/Release/net10.0/pgw-loadgen

"$PGW" simulate --urls "http://127.0.0.1:$SIM_PORT" >/dev/null 2>&1 &
SIM=$!
"$PGW" serve --urls "http://127.0.0.1:$GW_PORT" --config benchmarks/http/gateway-over-simulator.json >/dev/null 2>&1 &
GW=$!
trap 'kill $SIM $GW 2>/dev/null; wait 2>/dev/null' EXIT
for port in $SIM_PORT $GW_PORT; do
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1 && break; sleep 0.1; done
done

run() { # name url connections
  wrk -t2 -c"$3" -d"${DURATION}s" --latency -s benchmarks/http/post-chat.lua "$2" \
    | awk -v name="$1" -v c="$3" '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {printf "%-28s c=%-4s %10s req/s  p50 %-9s p99 %s\n", name, c, rps, p50, p99}'
}

echo "warm-up"; wrk -t2 -c32 -d5s -s benchmarks/http/post-chat.lua "http://127.0.0.1:$GW_PORT/v1/chat/completions" >/dev/null
for c in 16 128; do
  run "direct to simulator" "http://127.0.0.1:$SIM_PORT/v1/chat/completions" "$c"
  run "through the gateway" "http://127.0.0.1:$GW_PORT/v1/chat/completions" "$c"
done
fixed() { # name url
  printf '%-28s ' "$1"
  "$LOADGEN" "$2" --rate "$RATE" --seconds "$DURATION" --warmup 3 --connections 64
}
for _ in 1 2; do
  fixed "direct to simulator" "http://127.0.0.1:$SIM_PORT/v1/chat/completions"
  fixed "through the gateway" "http://127.0.0.1:$GW_PORT/v1/chat/completions"
done
echo "gateway peak RSS: $(awk '/VmHWM/ {print $2, $3}' /proc/$GW/status)"
