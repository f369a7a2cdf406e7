#!/usr/bin/env bash
# Chat engine speed beside llama.cpp, in the same run, on the same GGUF and
# prompt: prompt processing and decode tokens/s of one sequence, then 8
# sequences decoded together (aggregate tokens/s against one stream); then,
# over HTTP on a running release server, time to first token of a
# 100-token prompt and the 8-stream aggregate, and resident memory.
#
#   load/bench/chat.sh REFERENCE_PYTHON [ROUNDS]
#
# REFERENCE_PYTHON: a Python with llama-cpp-python installed (see
# ../shared/anchors/README.md); ../shared/anchors/bench_llama.py runs with it.
# For the reference to run the same kernels as Blaze (AMX included), give
# it llama.cpp built from llama-cpp-sys-2's sources the way Blaze builds
# them, through LLAMA_CPP_LIB_PATH:
#
#   CMAKE_ARGS=-DLLAMA_BUILD=OFF pip install llama-cpp-python   # bindings only
#   CC=clang CXX=clang++ CXXFLAGS=-D__AMX_INT8__ cmake -S LLAMA_CPP_SOURCES -B build \
#     -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
#     -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
#     -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF
#   cmake --build build -j2 && LLAMA_CPP_LIB_PATH=$PWD/build/bin load/bench/chat.sh venv/bin/python
set -euo pipefail
python=${1:?usage: chat.sh REFERENCE_PYTHON [ROUNDS]}
rounds=${2:-2}
[ "$rounds" -ge 1 ] && [ "$rounds" -le 10 ] || { echo "ROUNDS must be 1..10" >&2; exit 2; }
. "$(dirname "$0")/common.sh"
anchors=${ANCHORS:-$root/../shared/anchors}

"$bin/blaze" models pull smollm2-135m-instruct >/dev/null
gguf=${BLAZE_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/blaze/models}/smollm2-135m-instruct/model.gguf

# Alternate the engines; the reference writes the prompt ids both use.
for round in $(seq "$rounds"); do
  echo "# round $round"
  "$python" "$anchors/bench_llama.py" "$gguf" "$work/prompt_ids.txt" 128 128 3 2 2>/dev/null | grep '^RESULT' \
    | tee -a "$work/results.txt"
  engine_bench chat "$gguf" "$work/prompt_ids.txt" --generate 128 --repeats 3 --threads 2 --streams 8 \
    --context-length 2048 2>/dev/null | grep '^RESULT' | tee -a "$work/results.txt"
done

port=18482
start_server blaze $port /health/ready env BLAZE__SERVER__PORT=$port "$bin/blaze" serve --offline
url=http://127.0.0.1:$port
# About 100 prompt tokens with the chat template; 64 completion tokens.
python3 "$root/load/bench/chat.py" "$url" smollm2-135m-instruct 75 64 5 1 | tee -a "$work/http.txt"
python3 "$root/load/bench/chat.py" "$url" smollm2-135m-instruct 75 128 3 8 | tee -a "$work/http.txt"
resident=$(awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' /proc/$started/status)
echo "RESULT resident_memory_mb=$resident (both models loaded)"
python3 - "$work/results.txt" "$work/http.txt" "$resident" <<'PY'
import json, statistics, sys
def fields(line):
    return {k: v for k, v in (f.split("=", 1) for f in line.split() if "=" in f)}
engines = {"reference": {}, "blaze": {}}
for line in open(sys.argv[1]):
    f = fields(line)
    engine = "blaze" if f["engine"] == "blaze" else "reference"
    for key in ("pp_tok_s_median", "tg_tok_s_median", "ratio_to_one_stream", "aggregate_tg_tok_s_median"):
        if key in f:
            engines[engine].setdefault(key, []).append(float(f[key]))
median = lambda engine, key: statistics.median(engines[engine][key])
figures = {"benchmark": "chat",
           "blaze_prompt_tok_s": median("blaze", "pp_tok_s_median"),
           "reference_prompt_tok_s": median("reference", "pp_tok_s_median"),
           "blaze_decode_tok_s": median("blaze", "tg_tok_s_median"),
           "reference_decode_tok_s": median("reference", "tg_tok_s_median"),
           "streams_8_aggregate_tok_s": median("blaze", "aggregate_tg_tok_s_median"),
           "streams_8_to_one": median("blaze", "ratio_to_one_stream")}
figures["prompt_ratio"] = figures["blaze_prompt_tok_s"] / figures["reference_prompt_tok_s"]
figures["decode_ratio"] = figures["blaze_decode_tok_s"] / figures["reference_decode_tok_s"]
for line in open(sys.argv[2]):
    if line.startswith("RESULT"):
        f = fields(line)
        prefix = f"http_streams_{f['streams']}"
        figures[f"{prefix}_ttft_p50_ms"] = float(f["ttft_p50_ms"])
        figures[f"{prefix}_aggregate_tok_s"] = float(f["aggregate_tok_per_s"])
figures["resident_memory_mb"] = int(sys.argv[3])
print(json.dumps(figures, separators=(",", ":")))
PY
