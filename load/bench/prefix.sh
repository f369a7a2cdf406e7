#!/usr/bin/env bash
# Prefix reuse: time to first token of the last turn of a 10-turn
# conversation (about 60 tokens a turn onto a history of about 1,500
# tokens at the last turn), on a release server with prefix reuse against
# one without it (models.catalog.<id>.prefix_reuse: false), alternating
# in one run; then the same for 8 conversations at once.
#
#   load/bench/prefix.sh [ROUNDS]
set -euo pipefail
rounds=${1:-3}
[ "$rounds" -ge 1 ] && [ "$rounds" -le 10 ] || { echo "ROUNDS must be 1..10" >&2; exit 2; }
. "$(dirname "$0")/common.sh"

model=smollm2-135m-instruct
"$bin/blaze" models pull "$model" >/dev/null
printf 'models:\n  catalog:\n    %s:\n      prefix_reuse: false\n' "$model" > "$work/off.yaml"
run() {
  local label=$1 config=$2 streams=$3 round=$4 port=18483
  if [ -n "$config" ]; then
    start_server "$label" $port /health/ready env BLAZE__SERVER__PORT=$port "$bin/blaze" serve --offline --config "$config"
  else
    start_server "$label" $port /health/ready env BLAZE__SERVER__PORT=$port "$bin/blaze" serve --offline
  fi
  echo "$label $(python3 "$root/load/bench/conversation.py" "http://127.0.0.1:$port" "$model" 10 "$streams" 600 "$round" | grep '^RESULT')" \
    | tee -a "$work/results.txt"
  kill "$started"
  wait "$started" 2>/dev/null || true
}
for streams in 1 8; do
  for round in $(seq "$rounds"); do
    run reuse "" "$streams" "$round"
    run no_reuse "$work/off.yaml" "$streams" "$round"
  done
done
python3 - "$work/results.txt" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    label, _, *fields = line.split()
    fields = dict(f.split("=", 1) for f in fields)
    runs.setdefault((label, fields["streams"]), []).append(float(fields["last_turn_ttft_ms"]))
figures = {"benchmark": "prefix"}
for streams in ("1", "8"):
    reuse = statistics.median(runs[("reuse", streams)])
    none = statistics.median(runs[("no_reuse", streams)])
    figures[f"reuse_ttft_ms_{streams}"] = reuse
    figures[f"no_reuse_ttft_ms_{streams}"] = none
    figures[f"reuse_to_none_{streams}"] = reuse / none
    print(f"{streams} conversation(s): last-turn TTFT {reuse:.1f} ms with reuse, {none:.1f} ms without: {none / reuse:.2f}x")
print(json.dumps(figures, separators=(",", ":")))
PY
