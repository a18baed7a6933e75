#!/usr/bin/env bash
# The request log's CPU per request at saturation, paired (issue 22): see paired.sh (PAIR=log).
# Usage: [ROUNDS=9] [CONNECTIONS=32] benchmarks/http/log-ab.sh [seconds]
PAIR=log exec "$(dirname "$0")/paired.sh" "$@"
