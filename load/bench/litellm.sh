#!/usr/bin/env bash
# Blaze's gateway beside the LiteLLM proxy: both proxy the same chat
# completion to the same fast local upstream (blaze-reference's canned
# completion), both behind an API key, driven by the same load generator
# (wrk) in alternating rounds on the same machine. Reports requests/s, p50,
# p99, CPU seconds per 1,000 requests and resident memory of each proxy
# (LiteLLM's whole process tree: its workers included).
# Targets: >= 100x LiteLLM's requests/s and <= 1/20 of its p99.
#
#   load/bench/litellm.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Defaults: 3 rounds of 10 s at 64 connections. The first run installs
# LiteLLM (PyPI litellm[proxy], pinned below) into a venv under
# $HOME/.cache/blaze/bench; it runs with 2 workers, its default of one per
# logical CPU, logging at ERROR and its bundled model cost map (no fetch).
# wrk waits up to 30 s for an answer (its default, 2 s, would cut off
# LiteLLM's slowest answers and understate its p99). Blaze's resident
# memory includes its two local models, loaded as in every other run.
# Not part of the test suite.
set -euo pipefail
. "$(dirname "$0")/common.sh"
load_arguments "$@"

litellm_version=1.106.12
venv=${XDG_CACHE_HOME:-$HOME/.cache}/blaze/bench/litellm
if ! "$venv/bin/litellm" --version 2>/dev/null | grep -q "$litellm_version"; then
  echo "installing litellm[proxy]==$litellm_version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$litellm_version"
fi

reference_port=18497
blaze_port=18498
litellm_port=18499
start_server reference $reference_port /health "$bin/blaze-reference" --port $reference_port
upstream_route $reference_port > "$work/blaze.yaml"
start_server blaze $blaze_port /health/ready env BLAZE__SERVER__PORT=$blaze_port BLAZE_LOG=warn \
  "$bin/blaze" serve --offline --config "$work/blaze.yaml"
blaze_pid=$started

litellm_key="sk-$(openssl rand -hex 16)"
cat > "$work/litellm.yaml" <<YAML
model_list:
  - model_name: assistant
    litellm_params:
      model: openai/reference
      api_base: http://127.0.0.1:$reference_port/v1
      api_key: unused
general_settings:
  master_key: $litellm_key
litellm_settings:
  set_verbose: false
  telemetry: false
YAML
# setsid: its workers are its children; stopping the session stops them all.
start_server litellm $litellm_port /health/liveliness env LITELLM_LOG=ERROR LITELLM_LOCAL_MODEL_COST_MAP=True \
  setsid "$venv/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port $litellm_port --num_workers 2
litellm_pid=$started
stop_litellm() { kill -- -"$litellm_pid" 2>/dev/null || true; cleanup; }
trap stop_litellm EXIT

body='{"model":"assistant","max_tokens":16,"messages":[{"role":"user","content":"Name a color."}]}'
for port in $blaze_port $litellm_port; do
  key=$BLAZE_BENCH_KEY; [ "$port" = $litellm_port ] && key=$litellm_key
  answer=$(curl -fs "http://127.0.0.1:$port/v1/chat/completions" -H "Authorization: Bearer $key" \
    -H 'content-type: application/json' -d "$body") || { echo "port $port did not answer the chat completion" >&2; exit 1; }
  grep -q '"choices"' <<<"$answer" || { echo "port $port answered $answer" >&2; exit 1; }
done
post_script "$body" > "$work/blaze.lua"
BLAZE_BENCH_KEY=$litellm_key post_script "$body" > "$work/litellm.lua"

# PID -> the pids of it and all its descendants.
tree() { local pid=$1 child; echo "$pid"; for child in $(pgrep -P "$pid"); do tree "$child"; done; }
# PID -> CPU seconds (user + system) of its whole tree so far.
tree_cpu() { local total=0 pid; for pid in $(tree "$1"); do
  total=$(awk -v t="$total" '{ print t + ($14 + $15) / 100 }' "/proc/$pid/stat" 2>/dev/null || echo "$total"); done; echo "$total"; }
# PID -> resident memory of its whole tree, MiB.
tree_rss() { local pid; for pid in $(tree "$1"); do awk '/^VmRSS/ { print $2 }' "/proc/$pid/status" 2>/dev/null; done \
  | awk '{ s += $1 } END { printf "%.0f", s / 1024 }'; }

echo "wrk -t2 -c$connections -d${seconds}s, $rounds alternating rounds, a chat completion proxied to the same upstream"
for name in blaze litellm; do : > "$work/$name"; done
for round in $(seq "$rounds"); do
  for name in blaze litellm; do
    pid=$blaze_pid port=$blaze_port
    [ $name = litellm ] && pid=$litellm_pid port=$litellm_port
    before=$(tree_cpu "$pid")
    read -r rps p50 p99 < <(wrk_figures $name -t2 -c"$connections" -d"${seconds}s" --timeout 30s -s "$work/$name.lua" \
      "http://127.0.0.1:$port/v1/chat/completions")
    cpu=$(awk -v b="$before" -v a="$(tree_cpu "$pid")" -v r="$rps" -v s="$seconds" 'BEGIN { print (a - b) / (r * s) * 1000 }')
    rss=$(tree_rss "$pid")
    echo "$rps $p50 $p99 $cpu $rss" >> "$work/$name"
    printf '  round %d %-8s %10.0f req/s   p50 %9.0f us   p99 %9.0f us   %7.3f CPU s / 1,000 requests   RSS %5d MiB\n' \
      "$round" "$name" "$rps" "$p50" "$p99" "$cpu" "$rss"
  done
done

m() { cut -d' ' -f"$2" "$work/$1" | median; }
for name in blaze litellm; do
  printf 'median %-8s %10.0f req/s   p50 %9.0f us   p99 %9.0f us   %7.3f CPU s / 1,000 requests   RSS %5.0f MiB\n' \
    "$name" "$(m $name 1)" "$(m $name 2)" "$(m $name 3)" "$(m $name 4)" "$(m $name 5)"
done
awk -v br="$(m blaze 1)" -v b50="$(m blaze 2)" -v b99="$(m blaze 3)" -v bc="$(m blaze 4)" -v bm="$(m blaze 5)" \
  -v lr="$(m litellm 1)" -v l50="$(m litellm 2)" -v l99="$(m litellm 3)" -v lc="$(m litellm 4)" -v lm="$(m litellm 5)" 'BEGIN {
  printf "ratio: Blaze %.1fx LiteLLM'"'"'s requests/s (target >= 100), p99 1/%.1f of LiteLLM'"'"'s (target <= 1/20)\n", br/lr, l99/b99
  printf "{\"benchmark\":\"litellm\",\"blaze_rps\":%.1f,\"litellm_rps\":%.1f,\"rps_ratio\":%.2f,\"blaze_p50_us\":%.1f,\"litellm_p50_us\":%.1f,\"blaze_p99_us\":%.1f,\"litellm_p99_us\":%.1f,\"p99_fraction\":%.5f,\"blaze_cpu_s_per_1000\":%.4f,\"litellm_cpu_s_per_1000\":%.4f,\"blaze_rss_mib\":%d,\"litellm_rss_mib\":%d}\n", br, lr, br/lr, b50, l50, b99, l99, b99/l99, bc, lc, bm, lm
}'
