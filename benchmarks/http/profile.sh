#!/usr/bin/env bash
# Where the CPU goes, gateway against YARP: each alone over one simulator, under the same wrk load (CONNECTIONS),
# warmed WARMUP seconds, then `perf record -g` for SECONDS while the load goes on; the requests served during the
# recording come from wrk. Prints CPU samples per 1,000 requests grouped by assembly (perf-group.py), gateway (A) vs
# YARP (B), largest difference first. JIT-compiled frames are named through the runtime's perf map.
#
# PAIRED=1 loads and records both AT THE SAME TIME instead (one wrk each, as paired.sh does): profiles taken one after
# the other can disagree with the paired ratios — on 2026-12-03 one such pair put the gateway at 0.94x YARP's CPU per
# request while paired runs of the same builds said 1.26x (docs/benchmarks.md, "Profiled side by side").
#
# B=nolog (with PAIRED=1) puts the gateway with `--no-log` on the B side instead of YARP: what the request log costs,
# by assembly and symbol (the "yarp" files and column are then that gateway).
#
# LATENCY_MS=N gives the simulator that latency (the slow-upstream mode: LATENCY_MS=1000 CONNECTIONS=3000
# CONFIG=benchmarks/http/gateway-over-slow-simulator.json, where the gateway's CPU per request is furthest above YARP's).
#
# SCRIPT=FILE loads with another wrk script than benchmarks/http/post-chat.lua (a 100-byte request): post-agent.lua
# (a coding agent's ~55 KB step, the same body each time) or post-agent-step.lua (each request a new step of it).
# Usage: [CONNECTIONS=32] [WARMUP=30] [PAIRED=0] [B=yarp|nolog] [LATENCY_MS=0] [CONFIG=] [KEEP=DIR] benchmarks/http/profile.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
SCRIPT="${SCRIPT:-benchmarks/http/post-chat.lua}"
SECONDS_REC="${1:-15}"
CONNECTIONS="${CONNECTIONS:-32}"
WARMUP="${WARMUP:-30}"
PAIRED="${PAIRED:-0}"
SIM_PORT=18201 A_PORT=18202 B_PORT=18203
command -v perf >/dev/null || { echo "perf is needed (linux-perf)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
dotnet build -c Release src/PipelineGateway.Cli >/dev/null
dotnet build -c Release benchmarks/PipelineGateway.YarpProxy >/dev/null
PGW=src/PipelineGateway.Cli/bin/Release/net10.0/pgw
YARP=benchmarks/PipelineGateway.YarpProxy/bin/Release/net10.0/pgw-yarp
. benchmarks/http/common.sh
require_free_ports $SIM_PORT $A_PORT $B_PORT
ulimit -n 65536 2>/dev/null || true
OUT=${KEEP:-$(mktemp -d)}; mkdir -p "$OUT"
CFG=$(mktemp)
sed "s/127.0.0.1:18181/127.0.0.1:$SIM_PORT/" "${CONFIG:-benchmarks/http/gateway-over-simulator.json}" >"$CFG"
"$PGW" simulate --urls "http://127.0.0.1:$SIM_PORT" --latency-ms "${LATENCY_MS:-0}" >/dev/null 2>&1 & SIM=$!
trap 'kill $SIM $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -f "$CFG"; [ -n "${KEEP:-}" ] || rm -rf "$OUT"' EXIT
wait_for_servers "$SIM_PORT" "$SIM"

profile() { # name, then the command line of the front process
  local name=$1; shift
  DOTNET_PerfMapEnabled=1 DOTNET_EnableWriteXorExecute=0 "$@" >/dev/null 2>&1 & local pid=$!
  wait_for_servers "$A_PORT" "$pid"
  local url="http://127.0.0.1:$A_PORT/v1/chat/completions"
  wrk -t2 -c"$CONNECTIONS" -d"${WARMUP}s" -s "$SCRIPT" "$url" >/dev/null
  wrk -t2 -c"$CONNECTIONS" -d"$((SECONDS_REC + 2))s" -s "$SCRIPT" "$url" >"$OUT/$name.wrk" & local w=$!
  sleep 1
  perf record -q -F 499 -g -p "$pid" -o "$OUT/$name.data" -- sleep "$SECONDS_REC" 2>/dev/null
  wait $w
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # requests during the recording: wrk's rate times the recorded seconds
  awk -v s="$SECONDS_REC" '/Requests\/sec/ {printf "%d\n", $2 * s}' "$OUT/$name.wrk" >"$OUT/$name.requests"
}
profile_paired() { # both started, warmed and recorded at once, one wrk each
  local perfmap=(env DOTNET_PerfMapEnabled=1 DOTNET_EnableWriteXorExecute=0)
  "${perfmap[@]}" PGW_Gateway__RequestLog__Path="$LOG_DIR/a.db" "$PGW" serve --urls "http://127.0.0.1:$A_PORT" --config "$CFG" >/dev/null 2>&1 & local a=$!
  if [ "${B:-yarp}" = nolog ]; then
    "${perfmap[@]}" "$PGW" serve --urls "http://127.0.0.1:$B_PORT" --config "$CFG" --no-log >/dev/null 2>&1 & local b=$!
  else
    "${perfmap[@]}" "$YARP" --urls "http://127.0.0.1:$B_PORT" --upstream "http://127.0.0.1:$SIM_PORT" >/dev/null 2>&1 & local b=$!
  fi
  wait_for_servers "$A_PORT $B_PORT" "$a $b"
  local ua="http://127.0.0.1:$A_PORT/v1/chat/completions" ub="http://127.0.0.1:$B_PORT/v1/chat/completions"
  wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" -s "$SCRIPT" "$ua" >/dev/null & local w1=$!
  wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" -s "$SCRIPT" "$ub" >/dev/null & local w2=$!
  wait $w1 $w2
  wrk -t1 -c"$CONNECTIONS" -d"$((SECONDS_REC + 2))s" --timeout 30s -s "$SCRIPT" "$ua" >"$OUT/gateway.wrk" & w1=$!
  wrk -t1 -c"$CONNECTIONS" -d"$((SECONDS_REC + 2))s" --timeout 30s -s "$SCRIPT" "$ub" >"$OUT/yarp.wrk" & w2=$!
  sleep 1
  perf record -q -F 499 -g -p "$a" -o "$OUT/gateway.data" -- sleep "$SECONDS_REC" 2>/dev/null & local p1=$!
  perf record -q -F 499 -g -p "$b" -o "$OUT/yarp.data" -- sleep "$SECONDS_REC" 2>/dev/null & local p2=$!
  wait $p1 $p2 $w1 $w2
  kill "$a" "$b"; wait "$a" "$b" 2>/dev/null || true
  for name in gateway yarp; do awk -v s="$SECONDS_REC" '/Requests\/sec/ {printf "%d\n", $2 * s}' "$OUT/$name.wrk" >"$OUT/$name.requests"; done
}
LOG_DIR=$(mktemp -d)
if [ "$PAIRED" = 1 ]; then
  profile_paired
else
  profile gateway env PGW_Gateway__RequestLog__Path="$LOG_DIR/a.db" "$PGW" serve --urls "http://127.0.0.1:$A_PORT" --config "$CFG"
  profile yarp "$YARP" --urls "http://127.0.0.1:$A_PORT" --upstream "http://127.0.0.1:$SIM_PORT"
fi
rm -rf "$LOG_DIR"
echo "gateway $(cat "$OUT/gateway.requests") requests, $([ "${B:-yarp}" = nolog ] && echo "gateway --no-log" || echo YARP) $(cat "$OUT/yarp.requests") requests recorded (c=$CONNECTIONS, ${SECONDS_REC} s$([ "$PAIRED" = 1 ] && echo ", loaded at once"))"
python3 benchmarks/http/perf-group.py "$OUT/gateway.data" "$OUT/yarp.data" "$(cat "$OUT/gateway.requests")" "$(cat "$OUT/yarp.requests")"
