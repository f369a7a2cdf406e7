#!/usr/bin/env bash
# The in-process engine benchmarks that have no HTTP side: the guard's scan
# (actors/benches/guard.rs: prose of 100 KB, ASCII and with accents and
# curly quotes, on one core; target >= 300 MB/s for both) and decoding under
# a JSON Schema grammar against free decoding of the same prompt
# (actors/benches/structured.rs; target >= 0.8x), each ending in one JSON
# line of figures.
#
#   load/bench/engines.sh [SECONDS] [REPEATS]
#
# Defaults: 2 s per guard text, 5 structured-output repeats.
set -euo pipefail
seconds=${1:-2}
repeats=${2:-5}
awk -v s="$seconds" 'BEGIN { exit !(s >= 0.1 && s <= 60) }' || { echo "SECONDS must be 0.1..60" >&2; exit 2; }
[ "$repeats" -ge 1 ] && [ "$repeats" -le 50 ] || { echo "REPEATS must be 1..50" >&2; exit 2; }
. "$(dirname "$0")/common.sh"

"$bin/blaze" models pull smollm2-135m-instruct >/dev/null
gguf=${BLAZE_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/blaze/models}/smollm2-135m-instruct/model.gguf

engine_bench guard --seconds "$seconds" | tee "$work/guard.txt"
engine_bench structured "$gguf" --repeats "$repeats" 2>/dev/null | tee "$work/structured.txt"
python3 - "$work/guard.txt" "$work/structured.txt" <<'PY'
import json, sys
def fields(line):
    return {k: v for k, v in (f.split("=", 1) for f in line.split() if "=" in f)}
guard = {"benchmark": "guard"}
for line in open(sys.argv[1]):
    f = fields(line)
    if line.startswith("RESULT scan"):
        guard[f"{f['text']}_{int(f['bytes']) // 1000}kb_mb_per_s"] = float(f["mb_per_s"])
    elif line.startswith("RESULT adversarial"):
        guard["adversarial_10mb_to_1mb"] = float(f["ratio"])
    elif line.startswith("RESULT cached_chat_message"):
        guard["cached_chat_message_us"] = float(f["us"])
print(json.dumps(guard, separators=(",", ":")))
structured = {"benchmark": "structured"}
for line in open(sys.argv[2]):
    f = fields(line)
    if "json_schema_tg_tok_s_median" in f:
        structured.update(free_tok_s=float(f["free_tg_tok_s_median"]),
                          json_schema_tok_s=float(f["json_schema_tg_tok_s_median"]), ratio=float(f["ratio"]))
    elif "ttft_4_tools_ms_median" in f:
        structured.update(ttft_ms=float(f["ttft_ms_median"]), ttft_4_tools_ms=float(f["ttft_4_tools_ms_median"]))
print(json.dumps(structured, separators=(",", ":")))
PY
