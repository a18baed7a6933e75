#!/usr/bin/env bash
# Batch throughput: N lines (default 100,000) through `pgw batch` against the upstream simulator with an instant
# upstream and no limits; lines/s and peak RSS. Baselines in the same run: the simulator driven directly by wrk
# at the same concurrency (what the upstream can take), and the same batch against the in-process simulated
# provider (no HTTP: the runner and pipeline alone). Everything binds to 127.0.0.1 and stops by itself.
# Usage: benchmarks/batch/run.sh [lines] [concurrency]
set -euo pipefail
cd "$(dirname "$0")/../.."
LINES="${1:-100000}"
CONCURRENCY="${2:-256}"
SIM_PORT=18281
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "GNU time is needed: apt-get install -y time" >&2; exit 1; }

dotnet build -c Release src/PipelineGateway.Cli >/dev/null
PGW=src/PipelineGateway.Cli/bin/Release/net10.0/pgw
WORK=$(mktemp -d)
"$PGW" simulate --urls "http://127.0.0.1:$SIM_PORT" >/dev/null 2>&1 &
SIM=$!
trap 'kill $SIM 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$SIM_PORT/v1/models" >/dev/null 2>&1 && break; sleep 0.1; done

python3 - "$WORK/input.jsonl" "$LINES" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        body = {"model": "gpt-4o-mini", "max_tokens": 16,
                "messages": [{"role": "user", "content": f"Summarize line {i} of the benchmark batch."}]}
        f.write(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n")
PY

batch() { # name config
  rm -f "$WORK"/out.* 
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$PGW" batch "$WORK/input.jsonl" -o "$WORK/out.jsonl" \
    --config "$1" --concurrency "$CONCURRENCY" >"$WORK/log" 2>&1
  read -r secs rss_kb <"$WORK/time"
  local lines; lines=$(wc -l <"$WORK/out.jsonl")
  [ "$lines" -eq "$LINES" ] || { echo "expected $LINES results, got $lines" >&2; cat "$WORK/log" >&2; exit 1; }
  awk -v name="$2" -v n="$LINES" -v s="$secs" -v rss="$rss_kb" \
    'BEGIN {printf "%-40s %8d lines in %7.2f s  %9.0f lines/s  peak RSS %4.0f MiB\n", name, n, s, n/s, rss/1024}'
}

echo "warm-up"; wrk -t2 -c64 -d3s -s benchmarks/http/post-chat.lua "http://127.0.0.1:$SIM_PORT/v1/chat/completions" >/dev/null
wrk -t2 -c"$CONCURRENCY" -d10s -s benchmarks/http/post-chat.lua "http://127.0.0.1:$SIM_PORT/v1/chat/completions" \
  | awk -v c="$CONCURRENCY" '/Requests\/sec/ {printf "%-40s %9.0f req/s (wrk, c=%s, 10 s)\n", "baseline: simulator direct", $2, c}'
batch benchmarks/batch/gateway-over-simulator.json "pgw batch -> HTTP simulator"
batch benchmarks/batch/gateway-in-process.json "pgw batch -> in-process provider"
