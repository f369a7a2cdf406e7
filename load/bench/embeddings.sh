#!/usr/bin/env bash
# Embeddings throughput: Blaze in-process (the embed engine bench) at batch 1, 8
# and 32, then over HTTP with 64 concurrent clients each sending one
# sentence (wrk), and the ratio of the HTTP rate to the in-process batch-32
# rate (target >= 0.8). Inputs: one sentence per line (for example the
# anchors' short.txt from ../shared/anchors/gen_inputs.py).
#
#   load/bench/embeddings.sh INPUTS [SECONDS]
#
# The reference (sentence-transformers, PyTorch CPU, 2 threads) is run
# beside it with ../shared/anchors/bench_st.py on the same inputs.
set -euo pipefail
inputs=${1:?usage: embeddings.sh INPUTS [SECONDS]}
seconds=${2:-10}
[ "$seconds" -ge 1 ] && [ "$seconds" -le 120 ] || { echo "SECONDS must be 1..120" >&2; exit 2; }
. "$(dirname "$0")/common.sh"

"$bin/blaze" models pull all-minilm-l6-v2 >/dev/null
model_dir=${BLAZE_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/blaze/models}/all-minilm-l6-v2
in_process=$(engine_bench embed "$model_dir" "$inputs" bench 1,8,32 --sentences 256 --repeats 3)
echo "$in_process"
batch32=$(awk '/bs=32 / { for (i = 1; i <= NF; i++) if ($i ~ /^sent_per_s_median=/) { sub(/.*=/, "", $i); print $i } }' <<<"$in_process")

port=18481
start_server blaze $port /health/ready env BLAZE__SERVER__PORT=$port "$bin/blaze" serve --offline

# Each request: one sentence from the inputs, chosen per request, sent
# with Cache-Control: no-cache so every one is computed (the inputs repeat;
# without it the response cache would answer them after the first pass).
python3 - "$inputs" > "$work/post.lua" <<'PY'
import json, os, sys
lines = [l.strip() for l in open(sys.argv[1]) if l.strip()][:256]
bodies = [json.dumps({"model": "all-minilm-l6-v2", "input": l}) for l in lines]
print("local bodies = {" + ",".join(json.dumps(b) for b in bodies) + "}")
print('wrk.method = "POST"')
print('wrk.headers["Content-Type"] = "application/json"')
print('wrk.headers["Cache-Control"] = "no-cache"')
print('wrk.headers["Authorization"] = "Bearer ' + os.environ["BLAZE_BENCH_KEY"] + '"')
print("local n = 0")
print("request = function() n = n + 1; return wrk.format(nil, nil, nil, bodies[(n % #bodies) + 1]) end")
PY
read -r rps _ p99 < <(wrk_figures wrk -t2 -c64 -d"${seconds}s" -s "$work/post.lua" "http://127.0.0.1:$port/v1/embeddings")
echo "RESULT engine=blaze-http clients=64 sent_per_s=$rps p99_us=$p99"
# A batch of 32 in-process takes 32 / rate seconds: the p99 of one
# sentence over HTTP is held against that (target <= 2x).
awk -v http="$rps" -v inproc="$batch32" -v p99="$p99" 'BEGIN {
  batch_ms = 32000 / inproc
  printf "ratio: HTTP, 64 clients x 1 sentence = %.3fx the in-process batch-32 rate (target >= 0.8)\n", http / inproc
  printf "HTTP p99 %.1f ms = %.2fx the in-process batch-32 latency of %.1f ms (target <= 2)\n", p99 / 1000, p99 / 1000 / batch_ms, batch_ms
  printf "{\"benchmark\":\"embeddings\",\"in_process_batch32_per_s\":%.1f,\"in_process_batch32_ms\":%.2f,\"http_per_s\":%.1f,\"http_p99_ms\":%.2f,\"rate_ratio\":%.4f,\"p99_to_batch32\":%.4f}\n", inproc, batch_ms, http, p99 / 1000, http / inproc, p99 / 1000 / batch_ms
}'
