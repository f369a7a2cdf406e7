#!/usr/bin/env bash
# GET /health on Blaze against the bare actix-web reference server, same
# load generator (wrk), same machine, alternating runs (A B A B ...).
# Prints each run, the medians, and Blaze's ratios to the reference.
#
#   load/bench/health.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Defaults: 3 rounds of 10 s at 64 connections. Needs wrk (apt-get install wrk).
set -euo pipefail
. "$(dirname "$0")/common.sh"
load_arguments "$@"

blaze_port=18480
reference_port=18490
start_server blaze $blaze_port /health env BLAZE__SERVER__PORT=$blaze_port "$bin/blaze" serve
start_server reference $reference_port /health "$bin/blaze-reference" --port $reference_port

echo "GET /health, wrk -t2 -c$connections -d${seconds}s, $rounds alternating rounds"
: > "$work/blaze"; : > "$work/reference"
for round in $(seq "$rounds"); do
  for name in blaze reference; do
    port=$blaze_port; [ $name = reference ] && port=$reference_port
    read -r rps _ p99 < <(wrk_figures $name -t2 -c"$connections" -d"${seconds}s" "http://127.0.0.1:$port/health")
    echo "$rps $p99" >> "$work/$name"
    printf '  round %d %-9s %10.0f req/s   p99 %8.0f us\n' "$round" "$name" "$rps" "$p99"
  done
done
b_rps=$(cut -d' ' -f1 "$work/blaze" | median); b_p99=$(cut -d' ' -f2 "$work/blaze" | median)
r_rps=$(cut -d' ' -f1 "$work/reference" | median); r_p99=$(cut -d' ' -f2 "$work/reference" | median)
printf 'median    blaze %10.0f req/s   p99 %8.0f us\n' "$b_rps" "$b_p99"
printf 'median reference %9.0f req/s   p99 %8.0f us\n' "$r_rps" "$r_p99"
awk -v br="$b_rps" -v rr="$r_rps" -v bp="$b_p99" -v rp="$r_p99" 'BEGIN {
  printf "ratio: requests/s %.3fx the reference (target >= 0.9), p99 %.3fx the reference (target <= 1.2)\n", br/rr, bp/rp
  printf "{\"benchmark\":\"health\",\"blaze_rps\":%.1f,\"reference_rps\":%.1f,\"rps_ratio\":%.4f,\"blaze_p99_us\":%.1f,\"reference_p99_us\":%.1f,\"p99_ratio\":%.4f}\n", br, rr, br/rr, bp, rp, bp/rp
}'
