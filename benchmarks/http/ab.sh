#!/usr/bin/env bash
# Paired A/B of two gateway builds over one simulator: both are loaded AT THE SAME TIME by two fixed-rate generators
# (RATE req/s each), so whatever disturbs this shared VM during a round disturbs both alike. Rounds taken one after the
# other (A, then B) do not cancel it: on this machine a build compared with a copy of itself moved by up to 0.5 ms p50
# between rounds minutes apart. Prints, per round, each build's p50 / p99, the generator's send-lag p99 (above ~1 ms:
# the host disturbed the round; read such rounds with care) and each gateway's CPU per request.
# Usage: benchmarks/http/ab.sh DIR_A DIR_B [rounds] [seconds] [rate]
#   DIR_A / DIR_B: folders holding a Release build of pgw (e.g. copies of src/PipelineGateway.Cli/bin/Release/net10.0).
# Everything binds to 127.0.0.1; every run is bounded by its duration.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 DIR_A DIR_B [rounds] [seconds] [rate]" >&2; exit 2; }
A=$1; B=$2; ROUNDS=${3:-5}; SECONDS_PER_ROUND=${4:-15}; RATE=${5:-1000}
cd "$(dirname "$0")/../.."
SIM_PORT=18191 A_PORT=18193 B_PORT=18194
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
for dir in "$A" "$B"; do [ -x "$dir/pgw" ] || { echo "no pgw in $dir" >&2; exit 1; }; done
for project in src/PipelineGateway.Cli benchmarks/PipelineGateway.LoadGen; do dotnet build -c Release "$project" >/dev/null; done
PGW=src/PipelineGateway.Cli/bin/Release/net10.0/pgw
LOADGEN=benchmarks/PipelineGateway.LoadGen/bin/Release/net10.0/pgw-loadgen
CFG=$(mktemp)
sed "s/127.0.0.1:18181/127.0.0.1:$SIM_PORT/" benchmarks/http/gateway-over-simulator.json >"$CFG"
. benchmarks/http/common.sh
require_free_ports $SIM_PORT $A_PORT $B_PORT

"$PGW" simulate --urls "http://127.0.0.1:$SIM_PORT" >/dev/null 2>&1 & SIM=$!
"$A/pgw" serve --urls "http://127.0.0.1:$A_PORT" --config "$CFG" >/dev/null 2>&1 & GA=$!
"$B/pgw" serve --urls "http://127.0.0.1:$B_PORT" --config "$CFG" >/dev/null 2>&1 & GB=$!
OUT_A=$(mktemp); OUT_B=$(mktemp)
trap 'kill $SIM $GA $GB 2>/dev/null; wait 2>/dev/null; rm -f "$CFG" "$OUT_A" "$OUT_B"' EXIT
wait_for_servers "$SIM_PORT $A_PORT $B_PORT" "$SIM $GA $GB"

echo "warm-up (20 s)" # tiered compilation must finish in both before anything is compared
wrk -t2 -c32 -d10s -s benchmarks/http/post-chat.lua "http://127.0.0.1:$A_PORT/v1/chat/completions" >/dev/null
wrk -t2 -c32 -d10s -s benchmarks/http/post-chat.lua "http://127.0.0.1:$B_PORT/v1/chat/completions" >/dev/null

summary() { sed -E 's/.*p50 ([0-9.]+) ms, p90 [0-9.]+ ms, p99 ([0-9.]+) ms.*send lag p50 [0-9.]+ ms, p99 ([0-9.]+) ms/p50 \1 ms  p99 \2 ms  lag99 \3 ms/' "$1"; }
requests=$((RATE * SECONDS_PER_ROUND))
for round in $(seq 1 "$ROUNDS"); do
  a0=$(ticks $GA); b0=$(ticks $GB)
  "$LOADGEN" "http://127.0.0.1:$A_PORT/v1/chat/completions" --rate "$RATE" --seconds "$SECONDS_PER_ROUND" --connections 64 >"$OUT_A" & LA=$!
  "$LOADGEN" "http://127.0.0.1:$B_PORT/v1/chat/completions" --rate "$RATE" --seconds "$SECONDS_PER_ROUND" --connections 64 >"$OUT_B"
  wait $LA
  a1=$(ticks $GA); b1=$(ticks $GB)
  printf 'round %d  A: %s  cpu %d us | B: %s  cpu %d us\n' "$round" \
    "$(summary "$OUT_A")" $(((a1 - a0) * TICK_US / requests)) "$(summary "$OUT_B")" $(((b1 - b0) * TICK_US / requests))
done
