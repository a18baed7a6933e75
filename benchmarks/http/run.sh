#!/usr/bin/env bash
# HTTP load benchmark, all in one run: the same load against
#   1. the simulator directly                                     (the baseline),
#   2. a bare forwarding proxy in front of it (pgw-bareproxy)     (the floor of any Kestrel + HttpClient gateway),
#   3. the gateway in front of it (pgw serve)                     (what is measured),
# at saturation (wrk, fixed connections) and at a fixed rate (pgw-loadgen, open loop, 2,000 req/s by default),
# plus the CPU each process spent per request (from /proc/PID/stat) and the gateway's peak RSS. At saturation it also
# prints the ceiling the proxy's own CPU cost puts on its throughput relative to direct, whatever else it does.
# The fixed-rate runs go round-robin over the three targets ROUNDS times (default 3) and end with the medians of
# what the bare proxy and the gateway add to the direct latency: single rounds on a shared VM move by more than most
# changes do. Everything binds to 127.0.0.1; every run is bounded by its duration.
# Usage: [ROUNDS=N] benchmarks/http/run.sh [seconds] [rate]
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-15}"
RATE="${2:-2000}"
ROUNDS="${ROUNDS:-3}"
SIM_PORT=18181
GW_PORT=18180
BARE_PORT=18182
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }

for project in src/PipelineGateway.Cli benchmarks/PipelineGateway.LoadGen benchmarks/PipelineGateway.BareProxy; do
  dotnet build -c Release "$project" >/dev/null
done
PGW=src/PipelineGateway.Cli/bin/Release/net10.0/pgw
LOADGEN=benchmarks/PipelineGateway.LoadGen/bin/Release/net10.0/pgw-loadgen
BARE=benchmarks/PipelineGateway.BareProxy/bin/Release/net10.0/pgw-bareproxy

. benchmarks/http/common.sh
require_free_ports $SIM_PORT $GW_PORT $BARE_PORT

"$PGW" simulate --urls "http://127.0.0.1:$SIM_PORT" >/dev/null 2>&1 &
SIM=$!
"$PGW" serve --urls "http://127.0.0.1:$GW_PORT" --config benchmarks/http/gateway-over-simulator.json >/dev/null 2>&1 &
GW=$!
"$BARE" --urls "http://127.0.0.1:$BARE_PORT" --upstream "http://127.0.0.1:$SIM_PORT" >/dev/null 2>&1 &
BARE_PID=$!
trap 'kill $SIM $GW $BARE_PID 2>/dev/null; wait 2>/dev/null' EXIT
wait_for_servers "$SIM_PORT $GW_PORT $BARE_PORT" "$SIM $GW $BARE_PID"

URL_DIRECT="http://127.0.0.1:$SIM_PORT/v1/chat/completions"
URL_BARE="http://127.0.0.1:$BARE_PORT/v1/chat/completions"
URL_GW="http://127.0.0.1:$GW_PORT/v1/chat/completions"

declare -A RPS
CORES=$(nproc)
run() { # name url connections key pid-in-front-of-the-simulator (or empty)
  local line front0 front1 rps cpu
  front0=$([ -n "$5" ] && ticks "$5" || echo 0)
  line=$(wrk -t2 -c"$3" -d"${DURATION}s" --latency -s benchmarks/http/post-chat.lua "$2" \
    | awk -v name="$1" -v c="$3" '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {printf "%-22s c=%-4s %10s req/s  p50 %-9s p99 %s\n", name, c, rps, p50, p99}')
  front1=$([ -n "$5" ] && ticks "$5" || echo 0)
  rps=$(awk '{for (i = 2; i <= NF; i++) if ($i == "req/s") print $(i - 1)}' <<<"$line")
  RPS[$4$3]=$rps
  if [ -n "$5" ]; then
    # The CPU the process in front of the simulator spent per request at saturation, and the ceiling that puts on any
    # proxy of that cost: the machine spends CORES / direct-rate of CPU per direct request (every core busy), so a front
    # process costing C more per request can reach at most T / (T + C) of the direct rate.
    cpu=$(awk -v d=$((front1 - front0)) -v t=$TICK_US -v r="$rps" -v s="$DURATION" 'BEGIN {printf "%.1f", d * t / (r * s)}')
    line+=$(awk -v c="$cpu" -v n=$CORES -v d="${RPS[direct$3]}" 'BEGIN {t = n * 1e6 / d; printf "  (its CPU %s us/request; machine %.1f us per direct request: ceiling %.0f%% of direct)", c, t, 100 * t / (t + c)}')
  fi
  echo "$line"
}

# Warm-up: long enough for tiered compilation to finish its optimized code (under a saturating load the JIT's
# background thread competes for the same two cores; measured before that, the gateway is ~15% slower).
echo "warm-up (20 s)"
wrk -t2 -c32 -d12s -s benchmarks/http/post-chat.lua "$URL_GW" >/dev/null
wrk -t2 -c32 -d8s -s benchmarks/http/post-chat.lua "$URL_BARE" >/dev/null

for c in 16 128; do
  run "direct to simulator" "$URL_DIRECT" "$c" direct ""
  run "bare proxy (floor)" "$URL_BARE" "$c" bare "$BARE_PID"
  run "through the gateway" "$URL_GW" "$c" gateway "$GW"
  awk -v d="${RPS[direct$c]}" -v b="${RPS[bare$c]}" -v g="${RPS[gateway$c]}" -v c="$c" \
    'BEGIN {printf "%-22s c=%-4s bare proxy %.0f%% of direct; gateway %.0f%% of direct, %.0f%% of the bare proxy\n", "saturation ratios", c, 100*b/d, 100*g/d, 100*g/b}'
done

declare -A P50 P99 CPU
fixed() { # name url pid-in-front-of-the-simulator (or empty) label key round
  local front0 sim0 front1 sim1 line
  front0=$([ -n "$3" ] && ticks "$3" || echo 0); sim0=$(ticks $SIM)
  line=$("$LOADGEN" "$2" --rate "$RATE" --seconds "$DURATION" --warmup 3 --connections 64)
  front1=$([ -n "$3" ] && ticks "$3" || echo 0); sim1=$(ticks $SIM)
  # The generator's warm-up requests are counted in the CPU figures too: divide by all requests sent.
  local requests=$((RATE * (DURATION + 3)))
  printf '%-22s %s\n%-22s CPU per request: simulator %d us' "$1" "$line" "" $(((sim1 - sim0) * TICK_US / requests))
  [ -n "$3" ] && printf ', %s %d us' "$4" $(((front1 - front0) * TICK_US / requests))
  echo
  P50[$5$6]=$(sed -E 's/.*\/s, p50 ([0-9.]+) ms.*/\1/' <<<"$line") # the latency's p50, not the send lag's
  P99[$5$6]=$(sed -E 's/.*, p99 ([0-9.]+) ms, max.*/\1/' <<<"$line") # the latency's p99, not the send lag's
  local used=$((sim1 - sim0)) # the process in front of the simulator, or the simulator itself when direct
  [ -n "$3" ] && used=$((front1 - front0))
  CPU[$5$6]=$((used * TICK_US / requests))
}
for round in $(seq 1 "$ROUNDS"); do
  fixed "direct to simulator" "$URL_DIRECT" "" "" direct "$round"
  fixed "bare proxy (floor)" "$URL_BARE" "$BARE_PID" "bare proxy" bare "$round"
  fixed "through the gateway" "$URL_GW" "$GW" "gateway" gateway "$round"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
added() { # key p50|p99
  local -n table=$2
  for round in $(seq 1 "$ROUNDS"); do awk -v a="${table[$1$round]}" -v d="${table[direct$round]}" 'BEGIN {printf "%.3f ", a - d}'; done
}
echo "medians over $ROUNDS rounds at $RATE req/s (added = this target's latency minus direct's in the same round):"
for key in bare gateway; do
  cpus=""; for round in $(seq 1 "$ROUNDS"); do cpus+="${CPU[$key$round]} "; done
  printf '  %-8s added p50 %s ms, added p99 %s ms, CPU per request %s us\n' "$key" \
    "$(added $key P50 | median)" "$(added $key P99 | median)" "$(median <<<"$cpus")"
done
echo "gateway peak RSS: $(awk '/VmHWM/ {print $2, $3}' /proc/$GW/status)"
