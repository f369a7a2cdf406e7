#!/usr/bin/env bash
# The load suite's own ceiling: the requests/s blaze-load generates against
# the bare reference server (GET /health), against wrk's in the same run,
# alternating rounds (wrk, blaze-load, wrk, ...), same connections, same
# threads. Target: blaze-load >= 0.8x wrk, so the suite is never what limits
# a measurement.
#
#   load/bench/suite.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Defaults: 3 rounds of 10 s at 64 connections. Needs wrk (apt-get install wrk).
set -euo pipefail
. "$(dirname "$0")/common.sh"
load_arguments "$@"

reference_port=18491
start_server reference $reference_port /health "$bin/blaze-reference" --port $reference_port
url="http://127.0.0.1:$reference_port"

suite_run() {
  local code=0
  "$bin/blaze-load" run health --target "$url" --users "$connections" --threads 2 \
    --duration "${seconds}s" --warmup 0s --quiet --json "$work/run.json" > "$work/run.txt" || code=$?
  # 3: a threshold of the scenario not met, which is not this benchmark's concern.
  [ $code -eq 0 ] || [ $code -eq 3 ] || { cat "$work/run.txt" >&2; exit 1; }
  python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["total"]; e=t["errors"]; sys.stderr.write("  blaze-load: %d errors\n" % e if e else ""); print(t["rate_per_s"], t["latency_ms"]["p99"]*1000)' "$work/run.json"
}

echo "GET /health on the reference server, $connections connections, 2 threads, ${seconds} s, $rounds alternating rounds"
: > "$work/wrk"; : > "$work/suite"
for round in $(seq "$rounds"); do
  read -r rps _ p99 < <(wrk_figures wrk -t2 -c"$connections" -d"${seconds}s" "$url/health"); echo "$rps $p99" >> "$work/wrk"
  printf '  round %d %-10s %10.0f req/s   p99 %8.0f us\n' "$round" wrk "$rps" "$p99"
  read -r rps p99 < <(suite_run); echo "$rps $p99" >> "$work/suite"
  printf '  round %d %-10s %10.0f req/s   p99 %8.0f us\n' "$round" blaze-load "$rps" "$p99"
done
w_rps=$(cut -d' ' -f1 "$work/wrk" | median); s_rps=$(cut -d' ' -f1 "$work/suite" | median)
printf 'median wrk        %10.0f req/s\nmedian blaze-load %10.0f req/s\n' "$w_rps" "$s_rps"
awk -v s="$s_rps" -v w="$w_rps" 'BEGIN {
  printf "ratio: blaze-load generates %.3fx the requests/s of wrk (target >= 0.8)\n", s/w
  printf "{\"benchmark\":\"suite\",\"wrk_rps\":%.1f,\"blaze_load_rps\":%.1f,\"ratio\":%.4f}\n", w, s, s/w
}'
