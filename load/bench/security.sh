#!/usr/bin/env bash
# What hostile traffic costs (issue 20):
# 1. A flood of bogus password sign-ins: waves of 500 concurrent logins
#    with wrong passwords (brute-force cool-downs off, so every one asks for
#    a hash) against one Blaze process. Figures: peak RSS against idle
#    (target: within +100 MB), and the rate of valid API-key requests
#    (GET /v1/models, wrk) during the flood against the rate without it,
#    alternating rounds (target: at least 0.8x). A third figure separates
#    what the hashing costs from what any flood costs on shared cores: the
#    API rate during the same flood of garbage refresh tokens (no hash).
# 2. A 20 MiB chat body (25 messages, max_tokens 1, body limit raised to
#    50 MiB): how far it raises peak RSS before it is refused (target: at
#    most 4x the body).
#
#   load/bench/security.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Defaults: 3 rounds of 10 s, wrk at 64 connections. Needs wrk, openssl,
# python3, and root (or the same user) to read and reset /proc/PID peaks.
set -euo pipefail
. "$(dirname "$0")/common.sh"
load_arguments "$@"

port=18487
email=flood@example.com
start_server blaze $port /health/ready env BLAZE__SERVER__PORT=$port \
  BLAZE__SECURITY__BRUTE_FORCE__MAX_FAILURES=1000000000 \
  BLAZE__SERVER__BODY_LIMITS__CHAT_COMPLETIONS=52428800 \
  "$bin/blaze" serve --offline
blaze=$started
url=http://127.0.0.1:$port
curl -fs "$url/admin/users" -H "Authorization: Bearer $BLAZE_BENCH_KEY" -H 'content-type: application/json' \
  -d "{\"email\": \"$email\", \"password\": \"the one true password\"}" >/dev/null

kib() { awk -v field="$1:" '$1 == field {print $2}' "/proc/$blaze/status"; }
reset_peak() { echo 5 > "/proc/$blaze/clear_refs"; }
api() { wrk_figures "GET /v1/models" -t1 -c"$connections" -d"${seconds}s" -H "Authorization: Bearer $BLAZE_BENCH_KEY" "$url/v1/models"; }

echo "login flood: waves of 500 bogus sign-ins; API: wrk -t1 -c$connections -d${seconds}s GET /v1/models; $rounds alternating rounds"
: > "$work/quiet"; : > "$work/flood"; : > "$work/growth"; : > "$work/nohash"
for round in $(seq "$rounds"); do
  read -r rps _ _ < <(api); echo "$rps" >> "$work/quiet"
  printf '  round %d %-34s %10.0f req/s\n' "$round" "API key, no flood" "$rps"
  reset_peak
  idle=$(kib VmRSS)
  python3 "$root/load/bench/login_flood.py" "$url" "$email" 500 "$((seconds + 2))" > "$work/flood.json" &
  flood=$!
  sleep 1
  read -r rps _ _ < <(api); echo "$rps" >> "$work/flood"
  wait "$flood"
  peak=$(kib VmHWM)
  echo $(( (peak - idle) / 1024 )) >> "$work/growth"
  printf '  round %d %-34s %10.0f req/s   RSS idle %d MiB, peak %d MiB   %s\n' "$round" "API key, during the flood" \
    "$rps" $((idle / 1024)) $((peak / 1024)) "$(cat "$work/flood.json")"
  python3 "$root/load/bench/login_flood.py" "$url" "$email" 500 "$((seconds + 2))" refresh > "$work/nohash.json" &
  flood=$!
  sleep 1
  read -r rps _ _ < <(api); echo "$rps" >> "$work/nohash"
  wait "$flood"
  printf '  round %d %-34s %10.0f req/s   %s\n' "$round" "API key, during a no-hash flood" "$rps" "$(cat "$work/nohash.json")"
done
quiet=$(median < "$work/quiet"); during=$(median < "$work/flood"); growth=$(sort -g "$work/growth" | tail -n 1)
nohash=$(median < "$work/nohash")

# The large body: peak RSS before and after one 20 MiB chat request.
python3 - "$work/body.json" <<'PY'
import json, sys
messages = [{"role": "user", "content": "lorem ipsum dolor sit amet " * 31_100} for _ in range(25)]
json.dump({"model": "smollm2-135m-instruct", "messages": messages, "max_tokens": 1}, open(sys.argv[1], "w"))
PY
body_bytes=$(stat -c %s "$work/body.json")
reset_peak
before=$(kib VmHWM)
status=$(curl -s -o "$work/body.answer" -w '%{http_code}' "$url/v1/chat/completions" -H "Authorization: Bearer $BLAZE_BENCH_KEY" \
  -H 'content-type: application/json' --data-binary @"$work/body.json")
after=$(kib VmHWM)
echo "  20 MiB chat body: HTTP $status, $(head -c 160 "$work/body.answer")"

awk -v quiet="$quiet" -v during="$during" -v nohash="$nohash" -v growth="$growth" -v body="$body_bytes" -v before="$before" -v after="$after" 'BEGIN {
  raised = (after - before) * 1024
  printf "login flood: API-key rate %.0f req/s during the flood vs %.0f without: %.3fx (target >= 0.8); peak RSS +%d MiB over idle (target <= 100)\n", during, quiet, during/quiet, growth
  printf "reference: %.0f req/s during the same flood with no hash behind it (%.3fx); the login flood / no-hash flood: %.3fx\n", nohash, nohash/quiet, during/nohash
  printf "large body: %.1f MiB chat body raised peak RSS by %.1f MiB: %.2fx the body (target <= 4)\n", body/1048576, raised/1048576, raised/body
  printf "{\"benchmark\":\"security\",\"api_rps_quiet\":%.1f,\"api_rps_flood\":%.1f,\"api_rps_nohash_flood\":%.1f,\"api_ratio\":%.4f,\"flood_peak_rss_growth_mib\":%d,\"body_bytes\":%d,\"body_peak_rss_growth_bytes\":%d,\"body_ratio\":%.3f}\n", quiet, during, nohash, during/quiet, growth, body, raised, raised/body
}'
