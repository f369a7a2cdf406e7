#!/usr/bin/env bash
# What the usage ledger costs: a cached chat completion through Blaze's
# whole pipeline with the ledger on (a row per request, written in batches
# to the embedded store) against the same Blaze with it off
# (usage.enabled: false), same load generator (wrk), alternating rounds.
# Then the ledger's sustained write rate on PostgreSQL and on SQLite
# (actors/benches/ledger.rs: rows/s by batch size).
# Target: ledger on >= 0.95x the requests/s of ledger off.
#
#   load/bench/usage.sh [ROUNDS] [SECONDS] [CONNECTIONS] [LEDGER_ROWS]
#
# Defaults: 3 rounds of 10 s at 64 connections, 200,000 rows per write-rate
# run (0 skips the write rate: all.sh --smoke). Needs wrk, openssl, the
# models (blaze models pull) and PostgreSQL on 127.0.0.1:5432 (database test).
set -euo pipefail
. "$(dirname "$0")/common.sh"
load_arguments "${@:1:3}"
ledger_rows=${4:-200000}
[ "$ledger_rows" -ge 0 ] && [ "$ledger_rows" -le 10000000 ] || { echo "LEDGER_ROWS must be 0..10000000" >&2; exit 2; }

model=smollm2-135m-instruct
on_port=18486
off_port=18487
mkdir "$work/data-on" "$work/data-off"
start_server on $on_port /health/ready env BLAZE__SERVER__PORT=$on_port \
  BLAZE__STORAGE__DATA_DIR="$work/data-on" "$bin/blaze" serve --offline
start_server off $off_port /health/ready env BLAZE__SERVER__PORT=$off_port \
  BLAZE__STORAGE__DATA_DIR="$work/data-off" BLAZE__USAGE__ENABLED=false "$bin/blaze" serve --offline

body="{\"model\":\"$model\",\"temperature\":0,\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\"Name a color.\"}]}"
warm_cache "$body" $on_port $off_port
post_script "$body" > "$work/post.lua"

echo "wrk -t2 -c$connections -d${seconds}s, $rounds alternating rounds"
: > "$work/on"; : > "$work/off"
for round in $(seq "$rounds"); do
  for name in off on; do
    port=$on_port; [ $name = off ] && port=$off_port
    read -r rps p50 p99 < <(wrk_figures $name -t2 -c"$connections" -d"${seconds}s" -s "$work/post.lua" "http://127.0.0.1:$port/v1/chat/completions")
    echo "$rps $p50 $p99" >> "$work/$name"
    printf '  round %d ledger %-4s %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$round" "$name" "$rps" "$p50" "$p99"
  done
done
sleep 2
metric() { curl -s "http://127.0.0.1:$on_port/metrics" | awk -v name="$1" '$1 ~ "^"name {s += $2} END {print s + 0}'; }
echo "ledger on: rows written $(metric blaze_usage_records_written_total), dropped $(metric blaze_usage_records_dropped_total), write failures $(metric blaze_usage_write_failures_total)"
m() { cut -d' ' -f"$2" "$work/$1" | median; }
printf 'median cached chat, ledger off  %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$(m off 1)" "$(m off 2)" "$(m off 3)"
printf 'median cached chat, ledger on   %10.0f req/s   p50 %7.0f us   p99 %7.0f us\n' "$(m on 1)" "$(m on 2)" "$(m on 3)"
awk -v on="$(m on 1)" -v off="$(m off 1)" -v onp="$(m on 3)" -v offp="$(m off 3)" 'BEGIN {
  printf "ratio: ledger on %.3fx the requests/s of ledger off (target >= 0.95), p99 %.3fx\n", on/off, onp/offp
  printf "{\"benchmark\":\"usage\",\"ledger_off_rps\":%.1f,\"ledger_on_rps\":%.1f,\"rps_ratio\":%.4f,\"p99_ratio\":%.4f}\n", off, on, on/off, onp/offp
}'
kill "${pids[@]}" 2>/dev/null || true
if [ "$ledger_rows" -gt 0 ]; then
  echo "the ledger's sustained write rate:"
  engine_bench ledger --rows "$ledger_rows"
fi
