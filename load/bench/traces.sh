#!/usr/bin/env bash
# What tracing costs on the cached chat path (authentication, rate limit,
# cache hit, metrics, access log): three Blaze processes side by side,
# traces off, sampled at 0.01 and sampled at 1.0, all exporting over
# OTLP/HTTP to blaze-reference's POST /v1/traces (a collector that takes
# the batches and drops them). Same load generator (wrk), same machine,
# alternating rounds.
# Target: >= 0.9x the requests/s of traces off, at sampling 0.01.
#
#   load/bench/traces.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Defaults: 3 rounds of 10 s at 64 connections. Needs wrk, openssl and the
# models (blaze models pull).
set -euo pipefail
. "$(dirname "$0")/common.sh"
load_arguments "$@"

model=smollm2-135m-instruct
reference_port=18493
declare -A ports=([off]=18494 [sampled_001]=18495 [sampled_1]=18496)
declare -A ratios=([sampled_001]=0.01 [sampled_1]=1.0)
start_server reference $reference_port /health "$bin/blaze-reference" --port $reference_port
for name in off sampled_001 sampled_1; do
  mkdir "$work/data-$name"
  telemetry=()
  if [ $name != off ]; then
    telemetry=(BLAZE__TELEMETRY__OTLP_ENDPOINT="http://127.0.0.1:$reference_port"
      BLAZE__TELEMETRY__SAMPLING_RATIO="${ratios[$name]}")
  fi
  start_server $name "${ports[$name]}" /health/ready env BLAZE__SERVER__PORT="${ports[$name]}" \
    BLAZE__STORAGE__DATA_DIR="$work/data-$name" "${telemetry[@]}" "$bin/blaze" serve --offline
done

nonce=$(openssl rand -hex 8)
body="{\"model\":\"$model\",\"temperature\":0,\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\"Name a color. ($nonce)\"}]}"
warm_cache "$body" "${ports[off]}" "${ports[sampled_001]}" "${ports[sampled_1]}"
post_script "$body" > "$work/post.lua"

echo "wrk -t2 -c$connections -d${seconds}s, $rounds alternating rounds, cached chat completions"
for name in off sampled_001 sampled_1; do : > "$work/$name"; done
for round in $(seq "$rounds"); do
  for name in off sampled_001 sampled_1; do
    read -r rps p50 p99 < <(wrk_figures "$name" -t2 -c"$connections" -d"${seconds}s" -s "$work/post.lua" \
      "http://127.0.0.1:${ports[$name]}/v1/chat/completions")
    echo "$rps $p50 $p99" >> "$work/$name"
    printf '  round %d %-16s %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$round" "$name" "$rps" "$p50" "$p99"
  done
done
# The traced servers did export (and dropped nothing at this rate unless
# the counter says so).
for name in sampled_001 sampled_1; do
  curl -s "http://127.0.0.1:${ports[$name]}/metrics" \
    | awk -v n="$name" '/^blaze_trace_(spans_dropped|export_failures)_total/ { print "  " n ": " $0 }'
done

m() { cut -d' ' -f"$2" "$work/$1" | median; }
for name in off sampled_001 sampled_1; do
  printf 'median %-16s %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$name" "$(m $name 1)" "$(m $name 2)" "$(m $name 3)"
done
awk -v off="$(m off 1)" -v low="$(m sampled_001 1)" -v all="$(m sampled_1 1)" \
  -v off99="$(m off 3)" -v low99="$(m sampled_001 3)" -v all99="$(m sampled_1 3)" 'BEGIN {
  printf "ratio: sampling 0.01 %.3fx the requests/s of traces off (target >= 0.9), sampling 1.0 %.3fx\n", low/off, all/off
  printf "{\"benchmark\":\"traces\",\"off_rps\":%.1f,\"sampled_001_rps\":%.1f,\"sampled_1_rps\":%.1f,\"ratio_001\":%.4f,\"ratio_1\":%.4f,\"off_p99_us\":%.1f,\"sampled_001_p99_us\":%.1f,\"sampled_1_p99_us\":%.1f}\n", off, low, all, low/off, all/off, off99, low99, all99
}'
