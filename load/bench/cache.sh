#!/usr/bin/env bash
# A cached chat completion through Blaze's whole pipeline (authentication,
# rate limit, cache hit, metrics, access log) against the bare reference
# handler (blaze-reference, GET /health), same load generator (wrk), same
# machine, alternating rounds. Then the same request on a second Blaze
# whose rate limits and second cache tier are on Redis (127.0.0.1:6379),
# beside the first: what Redis adds to the median latency, under the same
# load and on one connection (one request at a time).
# Targets: cached chat >= 0.5x the reference's requests/s, p99 <= 2x the
# reference's p99; Redis adds <= 0.2 ms to the p50.
#
#   load/bench/cache.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Defaults: 3 rounds of 10 s at 64 connections. Needs wrk, openssl, the
# models (blaze models pull) and Redis on 127.0.0.1:6379.
set -euo pipefail
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { echo "Redis on 127.0.0.1:6379 does not answer" >&2; exit 2; }
. "$(dirname "$0")/common.sh"
load_arguments "$@"

model=smollm2-135m-instruct
local_port=18484
redis_port=18485
reference_port=18491
# Both Blaze processes take the bench key as their bootstrap admin; each
# its own data dir (identity store, disk tier).
mkdir "$work/data-local" "$work/data-redis"
start_server local $local_port /health/ready env BLAZE__SERVER__PORT=$local_port \
  BLAZE__STORAGE__DATA_DIR="$work/data-local" "$bin/blaze" serve --offline
start_server redis $redis_port /health/ready env BLAZE__SERVER__PORT=$redis_port \
  BLAZE__STORAGE__DATA_DIR="$work/data-redis" BLAZE__STORAGE__REDIS_URL=redis://127.0.0.1:6379 \
  BLAZE__RATE_LIMITS__BACKEND=redis "$bin/blaze" serve --offline
start_server reference $reference_port /health "$bin/blaze-reference" --port $reference_port

# A deterministic request (temperature 0): the first call computes and
# stores it, every later one is a memory hit. A fresh nonce per run keeps
# answers of earlier runs in the shared Redis out of the measurement.
nonce=$(openssl rand -hex 8)
body="{\"model\":\"$model\",\"temperature\":0,\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\"Name a color. ($nonce)\"}]}"
warm_cache "$body" $local_port $redis_port
post_script "$body" > "$work/post.lua"

# target threads connections -> "rps p50_us p99_us"; wrk -t2 needs at
# least 2 connections, so "one request at a time" is -t1 -c1.
run() {
  local load=(-t"$2" -c"$3" -d"${seconds}s")
  case $1 in
    reference) wrk_figures "$1" "${load[@]}" "http://127.0.0.1:$reference_port/health" ;;
    local) wrk_figures "$1" "${load[@]}" -s "$work/post.lua" "http://127.0.0.1:$local_port/v1/chat/completions" ;;
    redis) wrk_figures "$1" "${load[@]}" -s "$work/post.lua" "http://127.0.0.1:$redis_port/v1/chat/completions" ;;
  esac
}

echo "wrk -t2 -c$connections -d${seconds}s (and -t1 -c1), $rounds alternating rounds"
for name in reference local redis local_one redis_one; do : > "$work/$name"; done
for round in $(seq "$rounds"); do
  for name in reference local redis; do
    read -r rps p50 p99 < <(run $name 2 "$connections"); echo "$rps $p50 $p99" >> "$work/$name"
    printf '  round %d %-34s %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$round" "$name, $connections connections" "$rps" "$p50" "$p99"
  done
  for name in local redis; do
    read -r rps p50 p99 < <(run $name 1 1); echo "$rps $p50 $p99" >> "$work/${name}_one"
    printf '  round %d %-34s %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$round" "$name, 1 connection" "$rps" "$p50" "$p99"
  done
done
# Every request above was a memory hit: the hit counter covers them all.
hits=$(curl -s "http://127.0.0.1:$local_port/metrics" | awk '/^blaze_cache_requests_total/ && /result="hit"/ && /tier="memory"/ {s += $2} END {print s + 0}')
echo "memory hits counted by the local server: $hits"

m() { cut -d' ' -f"$2" "$work/$1" | median; }
printf 'median reference GET /health       %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$(m reference 1)" "$(m reference 2)" "$(m reference 3)"
printf 'median cached chat, local          %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$(m local 1)" "$(m local 2)" "$(m local 3)"
printf 'median cached chat, Redis          %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$(m redis 1)" "$(m redis 2)" "$(m redis 3)"
printf 'median cached chat, local, 1 conn  %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$(m local_one 1)" "$(m local_one 2)" "$(m local_one 3)"
printf 'median cached chat, Redis, 1 conn  %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$(m redis_one 1)" "$(m redis_one 2)" "$(m redis_one 3)"
awk -v rr="$(m reference 1)" -v rp="$(m reference 3)" -v lr="$(m local 1)" -v lp50="$(m local 2)" -v lp="$(m local 3)" \
  -v xr="$(m redis 1)" -v xp50="$(m redis 2)" -v op50="$(m local_one 2)" -v ox50="$(m redis_one 2)" 'BEGIN {
  printf "ratio: cached chat %.3fx the reference requests/s (target >= 0.5), p99 %.3fx the reference p99 (target <= 2)\n", lr/rr, lp/rp
  printf "Redis adds to the p50: %.0f us at %s connections, %.0f us on one connection (target <= 200 us)\n", xp50-lp50, "'"$connections"'", ox50-op50
  printf "{\"benchmark\":\"cache\",\"reference_rps\":%.1f,\"cached_rps\":%.1f,\"rps_ratio\":%.4f,\"reference_p99_us\":%.1f,\"cached_p99_us\":%.1f,\"p99_ratio\":%.4f,\"redis_rps\":%.1f,\"redis_added_p50_us\":%.1f,\"redis_added_p50_one_connection_us\":%.1f}\n", rr, lr, lr/rr, rp, lp, lp/rp, xr, xp50-lp50, ox50-op50
}'
