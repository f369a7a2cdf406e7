#!/usr/bin/env bash
# The WebSocket surface under load, on one Blaze process:
#  1. 10,000 concurrent idle authenticated sockets: the server's resident
#     memory per socket (target <= 16 KiB) and no errors;
#  2. 1,000 concurrent connections each streaming a cached chat completion
#     one after another, over the WebSocket protocol and over SSE in
#     alternating rounds: completions/s and p99 time to the last chunk.
#
#   load/bench/websocket.sh [ROUNDS] [SECONDS] [CONNECTIONS] [IDLE]
#
# Defaults: 3 rounds of 10 s at 1000 streaming connections, 10000 idle.
# Needs openssl and the models (blaze models pull); raises the open-file
# limit of itself and its children.
set -euo pipefail
. "$(dirname "$0")/common.sh"
load_arguments "${1:-3}" "${2:-10}" "${3:-1000}"
idle=${4:-10000}
[ "$idle" -ge 1 ] && [ "$idle" -le 50000 ] || { echo "IDLE must be 1..50000" >&2; exit 2; }
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((idle + 1000)) ] || { echo "the open-file limit ($(ulimit -n)) is below $idle sockets" >&2; exit 2; }

model=smollm2-135m-instruct
port=18486
start_server blaze $port /health/ready env BLAZE__SERVER__PORT=$port BLAZE__WEBSOCKET__MAX_CONNECTIONS_PER_KEY=100000 \
  BLAZE__WEBSOCKET__MAX_CONNECTIONS=100000 BLAZE__SERVER__MAX_CONNECTIONS=100000 BLAZE_LOG=warn \
  "$bin/blaze" serve --offline
server=$started
# jemalloc gives the model loads' transient buffers back to the system
# after its decay time (10 s): the per-socket figure's baseline is taken
# once that is done, not from a resident size still falling.
sleep 12

echo "== $idle idle sockets"
"$bin/blaze-ws-bench" idle --address 127.0.0.1:$port --connections "$idle" --server-pid "$server" | tee "$work/idle.txt"
sleep 2

# A deterministic request (temperature 0): computed once, then a memory hit.
body="{\"model\":\"$model\",\"temperature\":0,\"max_tokens\":16,\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Name a color. ($(openssl rand -hex 8))\"}]}"
echo "$body" > "$work/body.json"
curl -fs "http://127.0.0.1:$port/v1/chat/completions" -H "Authorization: Bearer $BLAZE_BENCH_KEY" \
  -H 'content-type: application/json' -d "$body" > /dev/null

echo "== $connections connections streaming a cached chat completion, ${seconds}s rounds"
for round in $(seq "$rounds"); do
  for surface in ws sse; do
    echo -n "round $round: "
    "$bin/blaze-ws-bench" stream --address 127.0.0.1:$port --surface $surface \
      --connections "$connections" --seconds "$seconds" --body "$work/body.json" | tee -a "$work/streams.txt"
  done
done
python3 - "$work/idle.txt" "$work/streams.txt" "$idle" <<'PY'
import json, re, statistics, sys
idle = open(sys.argv[1]).read()
per_socket = float(re.search(r"\(([0-9.]+) KiB\) per idle socket", idle).group(1))
figures = {"benchmark": "websocket", "idle_sockets": int(sys.argv[3]), "idle_kib_per_socket": per_socket}
rounds = {"ws": [], "sse": []}
for line in open(sys.argv[2]):
    fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
    surface = line.split()[0]
    if surface in rounds and "per_s" in fields:
        figures["connections"] = int(fields["connections"])
        rounds[surface].append((float(fields["per_s"]), float(fields["p99_ms"]), int(fields["errors"])))
for surface, runs in rounds.items():
    figures[f"{surface}_per_s"] = statistics.median(r[0] for r in runs)
    figures[f"{surface}_p99_ms"] = statistics.median(r[1] for r in runs)
    figures[f"{surface}_errors"] = sum(r[2] for r in runs)
print(json.dumps(figures, separators=(",", ":")))
PY
