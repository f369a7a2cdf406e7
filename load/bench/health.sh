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
work=$(mktemp -d)
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work" "$bench_data"; }
pids=()
trap cleanup EXIT

BLAZE__SERVER__PORT=$blaze_port "$bin/blaze" serve > "$work/blaze.log" 2>&1 &
pids+=($!)
"$bin/blaze-reference" --port $reference_port > "$work/reference.log" 2>&1 &
pids+=($!)
for port in $blaze_port $reference_port; do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  curl -fs "http://127.0.0.1:$port/health" >/dev/null || { echo "server on $port did not start" >&2; cat "$work"/*.log >&2; exit 1; }
done

run() { # name port -> "rps p99_us"
  local out; out=$(wrk -t2 -c"$connections" -d"${seconds}s" --latency "http://127.0.0.1:$2/health")
  local rps p99
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out" | to_us)
  local errors; errors=$(awk '/Non-2xx|Socket errors/' <<<"$out")
  [ -z "$errors" ] || echo "  $1: $errors" >&2
  echo "$rps $p99"
}

echo "GET /health, wrk -t2 -c$connections -d${seconds}s, $rounds alternating rounds"
: > "$work/blaze"; : > "$work/reference"
for round in $(seq "$rounds"); do
  for name in blaze reference; do
    port=$blaze_port; [ $name = reference ] && port=$reference_port
    read -r rps p99 < <(run $name $port)
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
