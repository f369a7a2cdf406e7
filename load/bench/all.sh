#!/usr/bin/env bash
# Every benchmark, one after another, and one table of their figures and
# ratios (load/bench/report.py) with the commit, the CPU and the date.
#
#   load/bench/all.sh           # the full run: about 40 minutes on 2 cores
#   load/bench/all.sh --smoke   # seconds a benchmark: the CI gate
#
# The full run writes load/bench/results/DATE-COMMIT.md and latest.jsonl
# (the figures) and regenerates the README's Performance table from them.
# The smoke run measures the HTTP benchmarks for 2 s each and the engines
# briefly, and fails only on a gross regression: a figure under half its
# target, or half its last recorded full-run figure where that is lower
# (see report.py). Benchmarks that need a reference installed by hand say so
# in the table's "Not run" list:
#   BLAZE_BENCH_LLAMA_PYTHON  a Python with llama-cpp-python (chat.sh; see
#                             ../shared/anchors/README.md)
# The embeddings inputs are made with ../shared/anchors/gen_inputs.py in a
# venv of its own (PyPI tokenizers) under $HOME/.cache/blaze/bench.
# Each benchmark's whole output is kept in a log directory named at the end.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bench=$root/load/bench
cache=${XDG_CACHE_HOME:-$HOME/.cache}/blaze/bench
mode=full
case ${1:-} in
  "") ;;
  --smoke) mode=smoke ;;
  *) echo "usage: $0 [--smoke]" >&2; exit 2 ;;
esac
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 2; }
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
logs=$cache/logs/$stamp-$mode
mkdir -p "$logs"
figures=$logs/figures.jsonl
: > "$figures"
declare -A not_run=()
failed=0

# run NAME SCRIPT ARGUMENTS...: one benchmark; its JSON lines go to the
# figures, its whole output to NAME.log.
run() {
  local name=$1 script=$2
  shift 2
  echo "== $name: $script $*"
  local started=$SECONDS code=0
  "$bench/$script" "$@" > "$logs/$name.log" 2>&1 || code=$?
  grep '^{"benchmark"' "$logs/$name.log" >> "$figures"
  if [ $code -ne 0 ]; then
    not_run[$name]="failed (exit $code; log $logs/$name.log)"
    failed=1
    tail -5 "$logs/$name.log" | sed 's/^/   /'
  fi
  echo "   $((SECONDS - started)) s"
}

if [ $mode = smoke ]; then
  for name in health auth cache suite gateway traces; do
    run $name $name.sh 1 2 64
  done
  run usage usage.sh 1 2 64 0
  run websocket websocket.sh 1 2 100 1000
  run engines engines.sh 0.2 1
  for name in security litellm embeddings embed_references chat prefix reload; do not_run[$name]="full run only"; done
else
  for name in health auth cache security suite usage gateway traces; do
    run $name $name.sh 3 10 64
  done
  run litellm litellm.sh 3 10 64
  run websocket websocket.sh 3 10 1000 10000
  run engines engines.sh 2 5
  run reload reload.sh 3
  run prefix prefix.sh 1
  # The embeddings inputs: 256 sentences of 12 tokens, as in the anchors.
  inputs=$cache/inputs/short.txt
  if [ ! -s "$inputs" ]; then
    models=${BLAZE_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/blaze/models}
    { [ -x "$cache/tokenizers/bin/python" ] || { python3 -m venv "$cache/tokenizers" \
        && "$cache/tokenizers/bin/pip" install --quiet --disable-pip-version-check tokenizers==0.22.1; }; } \
      && "$cache/tokenizers/bin/python" "$root/../shared/anchors/gen_inputs.py" "$models/all-minilm-l6-v2" \
        "$cache/inputs" > "$logs/inputs.log" 2>&1
  fi
  if [ -s "$inputs" ]; then
    run embeddings embeddings.sh "$inputs" 10
  else
    not_run[embeddings]="no inputs (log $logs/inputs.log)"
    failed=1
  fi
  # In-process against PyTorch and onnxruntime (installs them once).
  run embed_references embed_references.sh 3
  if [ -n "${BLAZE_BENCH_LLAMA_PYTHON:-}" ]; then
    run chat chat.sh "$BLAZE_BENCH_LLAMA_PYTHON" 2
  else
    not_run[chat]="needs BLAZE_BENCH_LLAMA_PYTHON, a Python with llama-cpp-python (../shared/anchors/README.md)"
  fi
fi

commit=$(git -C "$root" rev-parse --short HEAD)
git -C "$root" diff --quiet HEAD -- . ':!load/bench/results' ':!README.md' || commit="$commit+changes"
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
features=$(grep -qw amx_tile /proc/cpuinfo && echo AMX || { grep -qw avx512f /proc/cpuinfo && echo "AVX-512, no AMX" || echo "no AVX-512"; })
for name in "${!not_run[@]}"; do printf '%s\t%s\n' "$name" "${not_run[$name]}"; done > "$logs/not_run.tsv"
python3 - "$logs/meta.json" "$mode" "$commit" "$cpu" "$(nproc)" "$features" "$logs/not_run.tsv" <<'PY'
import datetime, json, sys
path, mode, commit, cpu, cores, features, skipped = sys.argv[1:]
not_run = dict(line.rstrip("\n").split("\t", 1) for line in open(skipped) if line.strip())
json.dump({"smoke": mode == "smoke", "date": datetime.date.today().isoformat(), "commit": commit, "cpu": cpu,
           "cores": int(cores), "features": features, "not_run": not_run}, open(path, "w"))
PY

if [ $mode = smoke ]; then
  python3 "$bench/report.py" "$figures" "$logs/meta.json" "$logs/table.md" --gate "$bench/results/latest.jsonl" || failed=1
else
  # The latest figure of every benchmark: this run's, and the last
  # recorded one of a benchmark that did not run now.
  python3 - "$figures" "$bench/results/latest.jsonl" <<'PY'
import json, os, sys
latest = {}
for path in (sys.argv[2], sys.argv[1]):
    if os.path.exists(path):
        for line in open(path):
            if line.startswith('{"benchmark"'):
                record = json.loads(line)
                latest[record["benchmark"]] = record
open(sys.argv[2], "w").write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in latest.values()))
PY
  python3 "$bench/report.py" "$figures" "$logs/meta.json" "$bench/results/$(date -u +%Y-%m-%d)-$commit.md" \
    --readme "$root/README.md"
fi
echo "logs: $logs"
exit $failed
