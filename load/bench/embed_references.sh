#!/usr/bin/env bash
# Blaze's embedding engine in-process against sentence-transformers
# (PyTorch) and onnxruntime on the same model files and inputs, in
# alternating rounds of one run, at batch 1, 8 and 32 on 12-token and
# 128-token sentences; then the table of sentences/s and Blaze's ratios
# (targets on a CPU without AMX: >= 1.5x PyTorch everywhere, >= 1.0x
# onnxruntime at batch 32 and >= 0.8x at batch 1).
#
#   load/bench/embed_references.sh [ROUNDS] [KERNELS]
#
# ROUNDS (default 3) alternations of Blaze, PyTorch and onnxruntime; each
# engine reports the median of its rounds. KERNELS (default: every path
# this CPU runs, e.g. avx512bf16,avx512vnni,avx2,generic) are Blaze's kernel paths to measure.
# The references are installed once into a venv under the cache dir
# (PyPI: torch, sentence-transformers, onnxruntime), and the ONNX export
# of the pulled weights is kept beside it. Not part of the test suite.
set -euo pipefail
rounds=${1:-3}
[ "$rounds" -ge 1 ] && [ "$rounds" -le 20 ] || { echo "ROUNDS must be 1..20" >&2; exit 2; }
. "$(dirname "$0")/common.sh"

cache=${XDG_CACHE_HOME:-$HOME/.cache}/blaze/bench
venv=$cache/references
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sentence_transformers, onnxruntime, onnx' 2>/dev/null; then
  echo "installing the references into $venv (a few minutes, once)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check torch sentence-transformers onnxruntime onnx
fi
python=$venv/bin/python
helper=$root/load/bench/embed_references.py

"$bin/blaze" models pull all-minilm-l6-v2 >/dev/null
model=${BLAZE_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/blaze/models}/all-minilm-l6-v2
[ -s "$cache/references-inputs/long.txt" ] || "$python" "$helper" inputs "$model" "$cache/references-inputs"
onnx=$cache/all-minilm-l6-v2.onnx
[ -s "$onnx" ] || "$python" "$helper" export "$model" "$onnx" >/dev/null 2>&1

kernels=${2:-$(grep -qw amx_tile /proc/cpuinfo && echo amx, || true)$(grep -qw avx512_bf16 /proc/cpuinfo && echo avx512bf16, || true)$(grep -qw avx512_vnni /proc/cpuinfo && echo avx512vnni, || true)$(grep -qw avx2 /proc/cpuinfo && echo avx2, || true)generic}
results=$work/results.txt
: > "$results"
# One round: each engine once over both inputs. Short inputs: 256
# sentences; long ones: 64 (batch 32 twice), so a round stays under a
# minute on 2 cores.
for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  for input in short:256 long:64; do
    label=${input%%:*}
    sentences=${input##*:}
    file=$cache/references-inputs/$label.txt
    engine_bench embed "$model" "$file" "$label" 1,8,32 --sentences "$sentences" --repeats 1 --kernels "$kernels" | tee -a "$results"
    THREADS=2 "$python" "$helper" bench torch "$model" "$file" "$label" 1,8,32 "$sentences" 1 2>/dev/null | tee -a "$results"
    THREADS=2 "$python" "$helper" bench onnx "$model" "$file" "$label" 1,8,32 "$sentences" 1 --onnx "$onnx" 2>/dev/null | tee -a "$results"
  done
done

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
features=$(grep -qw amx_tile /proc/cpuinfo && echo AMX || { grep -qw avx512_bf16 /proc/cpuinfo && echo "AVX-512 BF16, no AMX" || { grep -qw avx512f /proc/cpuinfo && echo "AVX-512, no AMX" || echo "AVX2, no AVX-512"; }; })
# Blaze's figure is its default path's: the first of KERNELS (fastest first).
python3 - "$results" "$cpu ($features, $(nproc) cores)" "blaze-${kernels%%,*}" <<'PY'
import json, statistics, sys
from collections import defaultdict
rates = defaultdict(list)
for line in open(sys.argv[1]):
    if not line.startswith("RESULT "):
        continue
    fields = dict(field.split("=", 1) for field in line.split()[1:] if "=" in field)
    engine = fields["engine"] if fields["engine"] != "blaze" else "blaze-" + fields["kernels"]
    rates[(engine, fields["input"], int(fields["bs"]))].append(float(fields["sent_per_s_median"]))
median = {key: statistics.median(values) for key, values in rates.items()}
engines = sorted({engine for engine, _, _ in median}, key=lambda name: (not name.startswith("blaze"), name))
shapes = sorted({(label, batch) for _, label, batch in median}, key=lambda shape: (shape[0] != "short", shape[1]))
print(f"\nSentences/s, median of the rounds; {sys.argv[2]}\n")
default = sys.argv[3]
print(f"| input | batch | " + " | ".join(engines) + f" | {default} / PyTorch | {default} / onnxruntime |")
print("| --- | --- |" + " --- |" * (len(engines) + 2))
flat = {"benchmark": "embed_references"}
for label, batch in shapes:
    row = [median.get((engine, label, batch)) for engine in engines]
    blaze = median.get((default, label, batch))
    torch, onnx = median.get(("torch", label, batch)), median.get(("onnx", label, batch))
    tokens = 12 if label == "short" else 128
    cells = " | ".join(f"{value:.1f}" if value else "-" for value in row)
    print(f"| {tokens} tokens | {batch} | {cells} | {blaze / torch:.2f}x | {blaze / onnx:.2f}x |")
    key = f"t{tokens}_b{batch}"
    flat.update({f"{key}_kernels": default.removeprefix("blaze-"), f"{key}_blaze": blaze, f"{key}_torch": torch, f"{key}_onnx": onnx,
                 f"{key}_vs_torch": round(blaze / torch, 4), f"{key}_vs_onnx": round(blaze / onnx, 4)})
print()
print(json.dumps(flat))
PY
