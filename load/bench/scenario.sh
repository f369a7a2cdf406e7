#!/usr/bin/env bash
# Runs a blaze-load scenario against a release Blaze started here (a
# throwaway data dir, a fresh admin key, rate limits no run reaches), with
# the baseline on the bare reference server in the same run. Extra
# arguments go to `blaze-load run` (--json, --html, --duration, ...).
#
#   load/bench/scenario.sh SCENARIO [BLAZE-LOAD RUN ARGUMENTS...]
#   load/bench/scenario.sh seed-targets --html seed.html
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 SCENARIO [blaze-load run arguments]" >&2; exit 2; }
. "$(dirname "$0")/common.sh"
scenario=$1; shift

blaze_port=18482
start_server blaze $blaze_port /health/ready env BLAZE__SERVER__PORT=$blaze_port "$bin/blaze" serve

code=0
"$bin/blaze-load" run "$scenario" --target "http://127.0.0.1:$blaze_port" --key "$BLAZE_BENCH_KEY" --baseline "$@" || code=$?
exit $code
