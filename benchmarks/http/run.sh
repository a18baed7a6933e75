#!/usr/bin/env bash
# HTTP load benchmark, all in one run: the same load against
#   1. the simulator directly                                     (the baseline),
#   2. a plain YARP reverse proxy in front of it (pgw-yarp)       (the best-kept .NET proxy: the floor to beat),
#   3. a bare forwarding proxy in front of it (pgw-bareproxy)     (Kestrel + HttpClient copying bytes, nothing else),
#   4. the gateway in front of it (pgw serve)                     (what is measured),
# at saturation (wrk, fixed connections, ROUNDS round-robin rounds, the order rotated each round) and at a fixed rate (pgw-loadgen, open loop,
# 2,000 req/s by default), with the CPU each front process spent per request (from /proc/PID/stat) and each process's
# peak RSS (VmHWM). Medians over rounds, and the gateway's ratios to YARP: single rounds on a shared VM move by more
# than most changes do. Everything binds to 127.0.0.1; every run is bounded by its duration.
#
# SCRIPT=FILE loads with another wrk script than benchmarks/http/post-chat.lua (a 100-byte request): post-agent.lua
# (a coding agent's ~55 KB step, the same body each time) or post-agent-step.lua (each request a new step of it).
# Usage: [ROUNDS=N] [CONNECTIONS="16 64 128"] [LATENCY_MS=0] [FIXED=1] benchmarks/http/run.sh [seconds] [rate]
#   LATENCY_MS=1000 CONNECTIONS=3000 FIXED=0 CONFIG=benchmarks/http/gateway-over-slow-simulator.json: the slow-upstream
#   mode (memory per in-flight request; the gateway gets workers and connections for 3,000 requests in flight).
# GC settings under test are passed to every .NET process alike through the environment (DOTNET_GCgen0size, ...).
# The gateway runs as shipped: its request log on (SQLite, in a temporary directory). LOG_AB=1 adds a second gateway
# started with --no-log, loaded in the same rounds, and prints the log's CPU per request (issue 22's target).
set -euo pipefail
cd "$(dirname "$0")/../.."
SCRIPT="${SCRIPT:-benchmarks/http/post-chat.lua}"
DURATION="${1:-15}"
RATE="${2:-2000}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-16 64 128}"
LATENCY_MS="${LATENCY_MS:-0}"
FIXED="${FIXED:-1}"
CONFIG="${CONFIG:-benchmarks/http/gateway-over-simulator.json}"
SIM_PORT=18181
GW_PORT=18180
BARE_PORT=18182
YARP_PORT=18183
NOLOG_PORT=18184
LOG_AB="${LOG_AB:-0}"
LOG_DIR=$(mktemp -d)
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }

for project in src/PipelineGateway.Cli benchmarks/PipelineGateway.LoadGen benchmarks/PipelineGateway.BareProxy benchmarks/PipelineGateway.YarpProxy; do
  dotnet build -c Release "$project" >/dev/null
done
PGW=src/PipelineGateway.Cli/bin/Release/net10.0/pgw
LOADGEN=benchmarks/PipelineGateway.LoadGen/bin/Release/net10.0/pgw-loadgen
BARE=benchmarks/PipelineGateway.BareProxy/bin/Release/net10.0/pgw-bareproxy
YARP=benchmarks/PipelineGateway.YarpProxy/bin/Release/net10.0/pgw-yarp

. benchmarks/http/common.sh
require_free_ports $SIM_PORT $GW_PORT $BARE_PORT $YARP_PORT $NOLOG_PORT
ulimit -n 65536 2>/dev/null || true

"$PGW" simulate --urls "http://127.0.0.1:$SIM_PORT" --latency-ms "$LATENCY_MS" >/dev/null 2>&1 &
SIM=$!
PGW_Gateway__RequestLog__Path="$LOG_DIR/gateway.db" "$PGW" serve --urls "http://127.0.0.1:$GW_PORT" --config "$CONFIG" >/dev/null 2>&1 &
GW=$!
NOLOG=""
if [ "$LOG_AB" = 1 ]; then
  "$PGW" serve --urls "http://127.0.0.1:$NOLOG_PORT" --config "$CONFIG" --no-log >/dev/null 2>&1 &
  NOLOG=$!
fi
"$BARE" --urls "http://127.0.0.1:$BARE_PORT" --upstream "http://127.0.0.1:$SIM_PORT" >/dev/null 2>&1 &
BARE_PID=$!
"$YARP" --urls "http://127.0.0.1:$YARP_PORT" --upstream "http://127.0.0.1:$SIM_PORT" >/dev/null 2>&1 &
YARP_PID=$!
trap 'kill $SIM $GW $BARE_PID $YARP_PID $NOLOG 2>/dev/null; wait 2>/dev/null; rm -rf "$LOG_DIR"' EXIT
if [ "$LOG_AB" = 1 ]; then
  wait_for_servers "$SIM_PORT $GW_PORT $BARE_PORT $YARP_PORT $NOLOG_PORT" "$SIM $GW $BARE_PID $YARP_PID $NOLOG"
else
  wait_for_servers "$SIM_PORT $GW_PORT $BARE_PORT $YARP_PORT" "$SIM $GW $BARE_PID $YARP_PID"
fi

declare -A URL=([direct]="http://127.0.0.1:$SIM_PORT/v1/chat/completions" [yarp]="http://127.0.0.1:$YARP_PORT/v1/chat/completions"
  [bare]="http://127.0.0.1:$BARE_PORT/v1/chat/completions" [gateway]="http://127.0.0.1:$GW_PORT/v1/chat/completions"
  [nolog]="http://127.0.0.1:$NOLOG_PORT/v1/chat/completions")
declare -A PID=([direct]="" [yarp]=$YARP_PID [bare]=$BARE_PID [gateway]=$GW [nolog]=$NOLOG)
declare -A NAME=([direct]="direct to simulator" [yarp]="YARP proxy" [bare]="bare proxy" [gateway]="through the gateway" [nolog]="gateway, --no-log")
TARGETS="direct yarp bare gateway"
[ "$LOG_AB" = 1 ] && TARGETS="direct yarp bare gateway nolog"
CORES=$(nproc)
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
rss() { awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/$1/status"; } # peak resident set, MiB
rss_now() { awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$1/status"; } # resident set now, MiB

# Warm-up: long enough for tiered compilation to finish its optimized code (under a saturating load the JIT's
# background thread competes for the same two cores; measured before that, the gateway is ~15% slower).
echo "warm-up"
for t in ${TARGETS#direct }; do wrk -t2 -c32 -d8s -s "$SCRIPT" "${URL[$t]}" >/dev/null; done
# Resident after the warm-up: the process's code and idle state. The peak minus this, over the connections of one
# CONNECTIONS value, is the memory each request in flight cost (the slow-upstream mode's "memory per in-flight request").
declare -A WARM_RSS
for t in ${TARGETS#direct }; do WARM_RSS[$t]=$(rss_now "${PID[$t]}"); done

# The targets in round N's order: rotated by N-1, so each takes each place in turn over the rounds (a fixed order
# put the gateway last every round, after three targets' loads: the host's slow spells then fell on it more often).
in_order() { # round
  local -a all=($TARGETS); local n=${#all[@]} i
  for ((i = 0; i < n; i++)); do printf '%s ' "${all[$(( (i + $1 - 1) % n ))]}"; done
}

declare -A RPS CPUS
saturate() { # target connections round
  local t=$1 c=$2 front0=0 front1=0 line rps cpu=""
  [ -n "${PID[$t]}" ] && front0=$(ticks "${PID[$t]}")
  line=$(wrk -t2 -c"$c" -d"${DURATION}s" --timeout 30s --latency -s "$SCRIPT" "${URL[$t]}" \
    | awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Non-2xx|Socket errors/ {err=err " " $0} END {printf "%s %s %s%s", rps, p50, p99, err}')
  [ -n "${PID[$t]}" ] && front1=$(ticks "${PID[$t]}")
  rps=${line%% *}
  if [ -n "${PID[$t]}" ]; then cpu=$(awk -v d=$((front1 - front0)) -v t=$TICK_US -v r="$rps" -v s="$DURATION" 'BEGIN {printf "%.1f", d * t / (r * s)}'); fi
  RPS[$t$c]+="$rps "; CPUS[$t$c]+="$cpu "
  printf '  round %s c=%-5s %-20s %10s req/s  p50 %-9s p99 %-9s CPU/request %s us%s\n' "$3" "$c" "${NAME[$t]}" "$rps" \
    "$(awk '{print $2}' <<<"$line")" "$(awk '{print $3}' <<<"$line")" "${cpu:--}" "$(cut -d' ' -f4- <<<"$line")"
}
for c in $CONNECTIONS; do
  for round in $(seq 1 "$ROUNDS"); do for t in $(in_order "$round"); do saturate "$t" "$c" "$round"; done; done
  for t in $TARGETS; do
    printf '  median c=%-5s %-20s %10s req/s  CPU/request %s us\n' "$c" "${NAME[$t]}" "$(median <<<"${RPS[$t$c]}")" "$(median <<<"${CPUS[$t$c]}")"
  done
  awk -v d="$(median <<<"${RPS[direct$c]}")" -v y="$(median <<<"${RPS[yarp$c]}")" -v b="$(median <<<"${RPS[bare$c]}")" \
      -v g="$(median <<<"${RPS[gateway$c]}")" -v gc="$(median <<<"${CPUS[gateway$c]}")" -v yc="$(median <<<"${CPUS[yarp$c]}")" -v c="$c" \
    'BEGIN {printf "  ratios c=%-5s YARP %.0f%% of direct, bare %.0f%% of direct; gateway %.0f%% of direct, %.2fx YARP throughput, %.2fx YARP CPU per request\n", c, 100*y/d, 100*b/d, 100*g/d, g/y, gc/yc}'
  if [ "$LOG_AB" = 1 ]; then
    # Each round loads both gateways (back to back but in the round where the rotation splits them): the median of the
    # rounds' differences cancels slow drifts of the host.
    diffs=$(paste -d' ' <(tr ' ' '\n' <<<"${CPUS[gateway$c]}" | grep -v '^$') <(tr ' ' '\n' <<<"${CPUS[nolog$c]}" | grep -v '^$') | awk '{printf "%.1f ", $1 - $2}')
    awk -v g="$(median <<<"${CPUS[gateway$c]}")" -v n="$(median <<<"${CPUS[nolog$c]}")" -v gr="$(median <<<"${RPS[gateway$c]}")" -v nr="$(median <<<"${RPS[nolog$c]}")" \
        -v d="$(median <<<"$diffs")" -v all="$diffs" -v c="$c" \
      'BEGIN {printf "  request log c=%-5s %+.1f us CPU per request, median of the rounds'"'"' differences (rounds: %s); medians %.1f with the log, %.1f without; throughput %.2fx without\n", c, d, all, g, n, gr/nr}'
  fi
done

if [ "$FIXED" = 1 ]; then
  declare -A P50 P99 CPU
  fixed() { # target round
    local t=$1 front0 sim0 front1 sim1 line used
    front0=$([ -n "${PID[$t]}" ] && ticks "${PID[$t]}" || echo 0); sim0=$(ticks $SIM)
    line=$("$LOADGEN" "${URL[$t]}" --rate "$RATE" --seconds "$DURATION" --warmup 3 --connections 64)
    front1=$([ -n "${PID[$t]}" ] && ticks "${PID[$t]}" || echo 0); sim1=$(ticks $SIM)
    # The generator's warm-up requests are counted in the CPU figures too: divide by all requests sent.
    local requests=$((RATE * (DURATION + 3)))
    used=$((sim1 - sim0)); [ -n "${PID[$t]}" ] && used=$((front1 - front0))
    CPU[$t$2]=$((used * TICK_US / requests))
    printf '  round %s %-20s %s (CPU/request %s us)\n' "$2" "${NAME[$t]}" "$line" "${CPU[$t$2]}"
    P50[$t$2]=$(sed -E 's/.*\/s, p50 ([0-9.]+) ms.*/\1/' <<<"$line") # the latency's p50, not the send lag's
    P99[$t$2]=$(sed -E 's/.*, p99 ([0-9.]+) ms, max.*/\1/' <<<"$line") # the latency's p99, not the send lag's
  }
  echo "fixed rate, $RATE req/s:"
  for round in $(seq 1 "$ROUNDS"); do for t in $(in_order "$round"); do fixed "$t" "$round"; done; done
  added() { # key p50|p99
    local -n table=$2
    for round in $(seq 1 "$ROUNDS"); do awk -v a="${table[$1$round]}" -v d="${table[direct$round]}" 'BEGIN {printf "%.3f ", a - d}'; done
  }
  echo "medians over $ROUNDS rounds at $RATE req/s (added = this target's latency minus direct's in the same round):"
  for t in ${TARGETS#direct }; do
    cpus=""; for round in $(seq 1 "$ROUNDS"); do cpus+="${CPU[$t$round]} "; done
    printf '  %-20s added p50 %s ms, added p99 %s ms, CPU per request %s us\n' "${NAME[$t]}" \
      "$(added "$t" P50 | median)" "$(added "$t" P99 | median)" "$(median <<<"$cpus")"
  done
fi
echo "RSS after the warm-up: YARP ${WARM_RSS[yarp]} MiB, bare proxy ${WARM_RSS[bare]} MiB, gateway ${WARM_RSS[gateway]} MiB"
if [ "$(wc -w <<<"$CONNECTIONS")" = 1 ]; then
  for t in ${TARGETS#direct }; do
    awk -v n="${NAME[$t]}" -v p="$(rss "${PID[$t]}")" -v w="${WARM_RSS[$t]}" -v c="$CONNECTIONS" \
      'BEGIN {printf "  %-20s peak minus warm %d MiB: %.1f KiB per connection (c=%d)\n", n, p - w, (p - w) * 1024 / c, c}'
  done
fi
echo "peak RSS: YARP $(rss $YARP_PID) MiB, bare proxy $(rss $BARE_PID) MiB, gateway $(rss $GW) MiB$([ -n "$NOLOG" ] && echo ", gateway --no-log $(rss $NOLOG) MiB"), simulator $(rss $SIM) MiB"
[ -f "$LOG_DIR/gateway.db" ] && echo "request log: $(du -h "$LOG_DIR/gateway.db" | cut -f1) on disk (+ WAL $(du -h "$LOG_DIR/gateway.db-wal" 2>/dev/null | cut -f1))"
