#!/usr/bin/env bash
# What authentication costs: authenticated GET /v1/models (with an API key,
# then with a JWT access token) against unauthenticated GET /health on the
# same Blaze process, same load generator (wrk), alternating rounds.
# Target: each authenticated rate at least 0.85x the /health rate (cached
# validation costs at most 15%).
#
#   load/bench/auth.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Defaults: 3 rounds of 10 s at 64 connections. Needs wrk and openssl.
set -euo pipefail
. "$(dirname "$0")/common.sh"
load_arguments "$@"

port=18483
start_server blaze $port /health/ready env BLAZE__SERVER__PORT=$port "$bin/blaze" serve --offline
url=http://127.0.0.1:$port
token=$(curl -fs "$url/auth/token" -H 'content-type: application/json' -d "{\"api_key\": \"$BLAZE_BENCH_KEY\"}" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
for credential in "$BLAZE_BENCH_KEY" "$token"; do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/v1/models" -H "Authorization: Bearer $credential")" = 200 ] \
    || { echo "the credential is refused" >&2; exit 1; }
done

run() { # path [credential] -> "rps p50_us p99_us"
  local credential=()
  [ -z "${2:-}" ] || credential=(-H "Authorization: Bearer $2")
  wrk_figures "$1" -t2 -c"$connections" -d"${seconds}s" "${credential[@]}" "$url$1"
}

echo "wrk -t2 -c$connections -d${seconds}s, $rounds alternating rounds"
: > "$work/health"; : > "$work/key"; : > "$work/jwt"
for round in $(seq "$rounds"); do
  read -r rps _ p99 < <(run /health); echo "$rps $p99" >> "$work/health"
  printf '  round %d %-28s %10.0f req/s   p99 %8.0f us\n' "$round" "GET /health (public)" "$rps" "$p99"
  read -r rps _ p99 < <(run /v1/models "$BLAZE_BENCH_KEY"); echo "$rps $p99" >> "$work/key"
  printf '  round %d %-28s %10.0f req/s   p99 %8.0f us\n' "$round" "GET /v1/models (API key)" "$rps" "$p99"
  read -r rps _ p99 < <(run /v1/models "$token"); echo "$rps $p99" >> "$work/jwt"
  printf '  round %d %-28s %10.0f req/s   p99 %8.0f us\n' "$round" "GET /v1/models (JWT)" "$rps" "$p99"
done
h=$(cut -d' ' -f1 "$work/health" | median); k=$(cut -d' ' -f1 "$work/key" | median); j=$(cut -d' ' -f1 "$work/jwt" | median)
hp=$(cut -d' ' -f2 "$work/health" | median); kp=$(cut -d' ' -f2 "$work/key" | median); jp=$(cut -d' ' -f2 "$work/jwt" | median)
printf 'median GET /health           %10.0f req/s   p99 %8.0f us\n' "$h" "$hp"
printf 'median /v1/models, API key   %10.0f req/s   p99 %8.0f us\n' "$k" "$kp"
printf 'median /v1/models, JWT       %10.0f req/s   p99 %8.0f us\n' "$j" "$jp"
awk -v h="$h" -v k="$k" -v j="$j" 'BEGIN {
  printf "ratio: API key %.3fx, JWT %.3fx the /health rate (target >= 0.85)\n", k/h, j/h
  printf "{\"benchmark\":\"auth\",\"health_rps\":%.1f,\"api_key_rps\":%.1f,\"jwt_rps\":%.1f,\"api_key_ratio\":%.4f,\"jwt_ratio\":%.4f}\n", h, k, j, k/h, j/h
}'
