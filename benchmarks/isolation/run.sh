#!/usr/bin/env bash
# Isolation under overload, over HTTP (not a timed test): a slow provider A (the simulator answering in 1.5 s, 32
# workers) and an instant provider B behind one `pgw serve`. For S seconds 800 connections flood A's model with one
# key, while a probe calls B's model 10 times a second with another key and a third key calls A's model at a modest
# rate; then one request per key on A's model. pgw-isolation prints what each saw and checks the targets; this script
# adds the gateway's peak RSS. Everything binds to 127.0.0.1.
# A flood connection whose request is refused waits the refusal's Retry-After before sending again, as the official
# SDKs do; HOSTILE=1 makes it send again at once (a client that ignores Retry-After: the refusals alone then saturate
# a 2-core machine shared by the load generator and the gateway).
# Usage: [HOSTILE=1] benchmarks/isolation/run.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_RUN="${1:-30}"
CONNECTIONS="${2:-800}"
SLOW_PORT=18191
FAST_PORT=18192
GW_PORT=18190

for project in src/PipelineGateway.Cli benchmarks/PipelineGateway.Isolation; do
  dotnet build -c Release "$project" >/dev/null
done
PGW=src/PipelineGateway.Cli/bin/Release/net10.0/pgw
TOOL=benchmarks/PipelineGateway.Isolation/bin/Release/net10.0/pgw-isolation

. benchmarks/http/common.sh
require_free_ports $SLOW_PORT $FAST_PORT $GW_PORT

FLOOD_KEY="sk-flood-$RANDOM$RANDOM"; MODEST_KEY="sk-modest-$RANDOM$RANDOM"; PROBE_KEY="sk-probe-$RANDOM$RANDOM"
hash() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
CONFIG=$(mktemp --suffix=.json)
cat >"$CONFIG" <<JSON
{
  "Gateway": {
    "Providers": [
      { "Name": "a", "Type": "OpenAICompatible", "BaseUrl": "http://127.0.0.1:$SLOW_PORT/v1", "Workers": 32, "QueueCapacity": 256 },
      { "Name": "b", "Type": "OpenAICompatible", "BaseUrl": "http://127.0.0.1:$FAST_PORT/v1", "Workers": 32, "QueueCapacity": 256 }
    ],
    "Models": [
      { "Name": "slow", "Deployments": [ { "Provider": "a", "Model": "gpt-4o-mini" } ] },
      { "Name": "fast", "Deployments": [ { "Provider": "b", "Model": "gpt-4o-mini" } ] }
    ],
    "Server": { "Keys": [
      { "Id": "flood", "Sha256": "$(hash "$FLOOD_KEY")" },
      { "Id": "modest", "Sha256": "$(hash "$MODEST_KEY")" },
      { "Id": "probe", "Sha256": "$(hash "$PROBE_KEY")" } ] }
  },
  "Logging": { "LogLevel": { "Default": "Warning" } }
}
JSON

"$PGW" simulate --urls "http://127.0.0.1:$SLOW_PORT" --latency-ms 1500 >/dev/null 2>&1 &
SLOW=$!
"$PGW" simulate --urls "http://127.0.0.1:$FAST_PORT" >/dev/null 2>&1 &
FAST=$!
"$PGW" serve --urls "http://127.0.0.1:$GW_PORT" --config "$CONFIG" >/dev/null 2>&1 &
GW=$!
trap 'kill $SLOW $FAST $GW 2>/dev/null; wait 2>/dev/null; rm -f "$CONFIG"' EXIT
wait_for_servers "$SLOW_PORT $FAST_PORT $GW_PORT" "$SLOW $FAST $GW"

echo "pgw-isolation: $CONNECTIONS connections for ${SECONDS_RUN} s on $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p'))"
status=0
"$TOOL" "http://127.0.0.1:$GW_PORT" --slow-model slow --fast-model fast \
  --flood-key "$FLOOD_KEY" --modest-key "$MODEST_KEY" --probe-key "$PROBE_KEY" \
  --connections "$CONNECTIONS" --seconds "$SECONDS_RUN" --probe-rate 10 --modest-rate 2 \
  --service-ms 1500 --max-queue-wait-ms 10000 --honor-retry-after "$([ "${HOSTILE:-0}" = 1 ] && echo false || echo true)" || status=$?
RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$GW/status")
awk -v kb="$RSS_KB" 'BEGIN {mib = kb / 1024; printf "%s  gateway peak RSS <= 300 MiB: %.0f MiB\n", (mib <= 300 ? "PASS" : "FAIL"), mib}'
awk -v kb="$RSS_KB" 'BEGIN {exit (kb / 1024 <= 300 ? 0 : 1)}' || status=1
exit $status
