#!/usr/bin/env bash
# What the gateway adds: a chat completion proxied by Blaze (a route whose
# one target is an upstream: authentication, rate limit, guard, admission,
# balancing, the forward and its answer read) against the same request
# sent to the upstream directly. The upstream is blaze-reference's canned
# completion (the fastest upstream there is); same load generator (wrk),
# same machine, alternating rounds.
# Target: <= 200 us added to the p50 at 64 connections (TensorZero
# publishes < 1 ms p99 at 10k QPS).
#
#   load/bench/gateway.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Defaults: 3 rounds of 10 s at 64 connections. Needs wrk, openssl and the
# models (blaze models pull).
#
# wrk keeps every connection busy, so on a machine where wrk, the upstream
# and the gateway share the cores the added p50 is mostly queueing behind
# the gateway's CPU time (Little's law: 64 requests in flight over the
# requests/s). Each round therefore also sends an open-loop load
# (blaze-load, a constant arrival rate of BLAZE_GATEWAY_RATE requests/s,
# 2,000 by default, over the same connections, coordinated omission
# corrected): what a request pays for the extra hop when the cores are not
# saturated. The gateway's CPU time per request is reported too.
set -euo pipefail
. "$(dirname "$0")/common.sh"
load_arguments "$@"

gateway_port=18486
reference_port=18492
start_server reference $reference_port /health "$bin/blaze-reference" --port $reference_port
upstream_route $reference_port > "$work/gateway.yaml"
start_server gateway $gateway_port /health/ready env BLAZE__SERVER__PORT=$gateway_port \
  "$bin/blaze" serve --offline --config "$work/gateway.yaml"
gateway_pid=$started

body='{"model":"assistant","max_tokens":16,"messages":[{"role":"user","content":"Name a color."}]}'
# Both answer, and the gateway says which target it was.
curl -fs "http://127.0.0.1:$reference_port/v1/chat/completions" -H 'content-type: application/json' -d "$body" >/dev/null
served=$(curl -fs -D - -o /dev/null "http://127.0.0.1:$gateway_port/v1/chat/completions" \
  -H "Authorization: Bearer $BLAZE_BENCH_KEY" -H 'content-type: application/json' -d "$body" \
  | awk 'tolower($1) == "x-blaze-served-by:" { sub(/\r$/, "", $2); print $2 }')
[ "$served" = reference ] || { echo "the gateway did not answer through the reference (x-blaze-served-by: '$served')" >&2; exit 1; }
post_script "$body" > "$work/post.lua"
rate=${BLAZE_GATEWAY_RATE:-2000}
cat > "$work/open.yaml" <<YAML
name: gateway-open
description: The gateway benchmark's chat completion at a constant arrival rate.
warmup: 1s
duration: ${seconds}s
arrival:
  open: { rate: $rate, connections: $connections }
steps:
  - name: chat
    request:
      path: /v1/chat/completions
      body: $body
YAML

# target threads connections -> "rps p50_us p99_us"; one request at a
# time (-t1 -c1) shows what the gateway adds without queueing behind the
# two cores that wrk, the upstream and the gateway share.
run() {
  local load=(-t"$2" -c"$3" -d"${seconds}s" -s "$work/post.lua")
  case $1 in
    direct*) wrk_figures "$1" "${load[@]}" "http://127.0.0.1:$reference_port/v1/chat/completions" ;;
    proxied*) wrk_figures "$1" "${load[@]}" "http://127.0.0.1:$gateway_port/v1/chat/completions" ;;
  esac
}

# PORT -> "rps p50_us p99_us" of the open-loop load.
open_run() {
  local code=0
  "$bin/blaze-load" run "$work/open.yaml" --target "http://127.0.0.1:$1" --key "$BLAZE_BENCH_KEY" \
    --threads 1 --quiet --json "$work/open.json" > "$work/open.txt" || code=$?
  [ $code -eq 0 ] || [ $code -eq 3 ] || { cat "$work/open.txt" >&2; exit 1; }
  python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["total"]; l=t["latency_ms"]; e=t["errors"]; sys.stderr.write("  blaze-load: %d errors\n" % e if e else ""); print(t["rate_per_s"], l["p50"]*1000, l["p99"]*1000)' "$work/open.json"
}
# The gateway's CPU seconds (user + system) so far.
gateway_cpu() { awk '{ print ($14 + $15) / 100 }' "/proc/$gateway_pid/stat"; }

echo "wrk -t2 -c$connections -d${seconds}s (and -t1 -c1), $rounds alternating rounds"
for name in direct proxied direct_one proxied_one direct_open proxied_open cpu; do : > "$work/$name"; done
for round in $(seq "$rounds"); do
  for name in direct proxied; do
    cpu_before=$(gateway_cpu)
    read -r rps p50 p99 < <(run $name 2 "$connections"); echo "$rps $p50 $p99" >> "$work/$name"
    [ $name = proxied ] && awk -v b="$cpu_before" -v a="$(gateway_cpu)" -v r="$rps" -v s="$seconds" \
      'BEGIN { print (a - b) / (r * s) * 1e6 }' >> "$work/cpu"
    printf '  round %d %-28s %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$round" "$name, $connections connections" "$rps" "$p50" "$p99"
  done
  for name in direct_one proxied_one; do
    read -r rps p50 p99 < <(run $name 1 1); echo "$rps $p50 $p99" >> "$work/$name"
    printf '  round %d %-28s %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$round" "${name%_one}, 1 connection" "$rps" "$p50" "$p99"
  done
  for name in direct_open proxied_open; do
    port=$reference_port; [ $name = proxied_open ] && port=$gateway_port
    read -r rps p50 p99 < <(open_run $port); echo "$rps $p50 $p99" >> "$work/$name"
    printf '  round %d %-28s %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$round" "${name%_open}, open $rate/s" "$rps" "$p50" "$p99"
  done
done
forwarded=$(curl -s "http://127.0.0.1:$gateway_port/metrics" | awk '/^blaze_gateway_requests_total/ && /target="reference"/ {s += $2} END {print s + 0}')
echo "requests the gateway forwarded: $forwarded"

m() { cut -d' ' -f"$2" "$work/$1" | median; }
printf 'median direct to the upstream   %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$(m direct 1)" "$(m direct 2)" "$(m direct 3)"
printf 'median through the gateway      %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$(m proxied 1)" "$(m proxied 2)" "$(m proxied 3)"
printf 'median direct, 1 connection     %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$(m direct_one 1)" "$(m direct_one 2)" "$(m direct_one 3)"
printf 'median gateway, 1 connection    %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$(m proxied_one 1)" "$(m proxied_one 2)" "$(m proxied_one 3)"
printf 'median direct, open %5d/s      %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$rate" "$(m direct_open 1)" "$(m direct_open 2)" "$(m direct_open 3)"
printf 'median gateway, open %5d/s     %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$rate" "$(m proxied_open 1)" "$(m proxied_open 2)" "$(m proxied_open 3)"
printf 'median gateway CPU time per proxied request (%s connections): %.0f us\n' "$connections" "$(m cpu 1)"
awk -v dr="$(m direct 1)" -v d50="$(m direct 2)" -v d99="$(m direct 3)" -v pr="$(m proxied 1)" -v p50="$(m proxied 2)" -v p99="$(m proxied 3)" \
  -v o50="$(m direct_one 2)" -v o99="$(m direct_one 3)" -v q50="$(m proxied_one 2)" -v q99="$(m proxied_one 3)" \
  -v r50="$(m direct_open 2)" -v r99="$(m direct_open 3)" -v s50="$(m proxied_open 2)" -v s99="$(m proxied_open 3)" \
  -v rate="$rate" -v cpu="$(m cpu 1)" 'BEGIN {
  printf "at %s connections the gateway adds %.0f us to the p50 (target <= 200 us) and %.0f us to the p99; requests/s %.3fx direct\n", "'"$connections"'", p50-d50, p99-d99, pr/dr
  printf "on one connection it adds %.0f us to the p50 and %.0f us to the p99\n", q50-o50, q99-o99
  printf "at %d requests/s open-loop over %s connections it adds %.0f us to the p50 (target <= 200 us) and %.0f us to the p99\n", rate, "'"$connections"'", s50-r50, s99-r99
  printf "{\"benchmark\":\"gateway\",\"direct_rps\":%.1f,\"proxied_rps\":%.1f,\"rps_ratio\":%.4f,\"direct_p50_us\":%.1f,\"proxied_p50_us\":%.1f,\"added_p50_us\":%.1f,\"direct_p99_us\":%.1f,\"proxied_p99_us\":%.1f,\"added_p99_us\":%.1f,\"added_p50_one_connection_us\":%.1f,\"added_p99_one_connection_us\":%.1f,\"open_rate\":%d,\"added_p50_open_us\":%.1f,\"added_p99_open_us\":%.1f,\"gateway_cpu_us_per_request\":%.1f}\n", dr, pr, pr/dr, d50, p50, p50-d50, d99, p99, p99-d99, q50-o50, q99-o99, rate, s50-r50, s99-r99, cpu
}'
