#!/usr/bin/env bash
# Load on demand: the first request to a model unloaded for being idle
# (models.catalog.<id>.idle_unload_s), which loads it again and waits for
# it, against the same request on the warm model, for each model of the
# catalog, on a release server.
#
#   load/bench/reload.sh [ROUNDS]
set -euo pipefail
rounds=${1:-3}
[ "$rounds" -ge 1 ] && [ "$rounds" -le 10 ] || { echo "ROUNDS must be 1..10" >&2; exit 2; }
. "$(dirname "$0")/common.sh"

"$bin/blaze" models pull all-minilm-l6-v2 smollm2-135m-instruct >/dev/null
printf 'models:\n  catalog:\n    all-minilm-l6-v2:\n      idle_unload_s: 2\n    smollm2-135m-instruct:\n      idle_unload_s: 2\n' > "$work/idle.yaml"
port=18484
start_server idle $port /health/ready env BLAZE__SERVER__PORT=$port "$bin/blaze" serve --offline --config "$work/idle.yaml"
python3 "$root/load/bench/reload.py" "http://127.0.0.1:$port" "$rounds"
