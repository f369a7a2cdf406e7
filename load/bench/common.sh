# shellcheck shell=bash
# Sourced by the benchmark scripts: checks the tools, builds the release
# binaries, sets $root, $bin and a scratch $work, and gives them the
# start-up, clean-up and wrk helpers they share.
# The load scripts' arguments, [ROUNDS] [SECONDS] [CONNECTIONS] (defaults
# 3, 10 and 64), into $rounds, $seconds and $connections.
load_arguments() {
  rounds=${1:-3}
  seconds=${2:-10}
  connections=${3:-64}
  [ "$rounds" -ge 1 ] && [ "$rounds" -le 20 ] || { echo "ROUNDS must be 1..20" >&2; exit 2; }
  [ "$seconds" -ge 1 ] && [ "$seconds" -le 120 ] || { echo "SECONDS must be 1..120" >&2; exit 2; }
  [ "$connections" -ge 2 ] && [ "$connections" -le 10000 ] || { echo "CONNECTIONS must be 2..10000" >&2; exit 2; }
}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 2; }
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/blaze/target}
# BLAZE_BENCH_PROFILE=dev measures the test build instead (dependencies,
# llama.cpp and blaze-actors optimized; the HTTP layer not).
# shellcheck disable=SC2034 # $bin is for the scripts that source this
case ${BLAZE_BENCH_PROFILE:-release} in
  release) cargo build --quiet --release --manifest-path "$root/Cargo.toml" -p blaze -p blaze-load
           bin=$CARGO_TARGET_DIR/release ;;
  dev) cargo build --quiet --manifest-path "$root/Cargo.toml" -p blaze -p blaze-load
       bin=$CARGO_TARGET_DIR/debug ;;
  *) echo "BLAZE_BENCH_PROFILE must be release or dev" >&2; exit 2 ;;
esac
# engine_bench NAME ARGUMENTS...: one of the engines' in-process benches
# (actors/benches/NAME.rs), in the same profile as $bin.
engine_bench() {
  local name=$1
  shift
  local profile=()
  [ "${BLAZE_BENCH_PROFILE:-release}" = dev ] && profile=(--profile dev)
  cargo bench --quiet --locked --manifest-path "$root/Cargo.toml" --workspace "${profile[@]}" \
    --bench "$name" -- "$@"
}
# Less disturbance from other sessions' work (builds); needs root, best effort.
echo -10 > /proc/self/autogroup 2>/dev/null || true
# Blaze authenticates every /v1 call: each run gets a throwaway data dir
# and a fresh admin key (BLAZE_BENCH_KEY), removed when the script exits.
BLAZE_BENCH_KEY="blz_$(openssl rand -hex 8)_$(openssl rand -hex 32)"
bench_data=$(mktemp -d)
export BLAZE_BENCH_KEY BLAZE__AUTH__BOOTSTRAP_KEY=$BLAZE_BENCH_KEY BLAZE__STORAGE__DATA_DIR=$bench_data
# Each script's scratch directory. The processes it starts go in $pids;
# when it exits they are stopped and $work and the data dir removed.
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work" "$bench_data"; }
trap cleanup EXIT
# start_server NAME PORT PATH COMMAND...: runs COMMAND in the background
# (its output in $work/NAME.log), stops it at exit, and waits up to 60 s
# for http://127.0.0.1:PORT/PATH to answer; $started is its pid.
start_server() {
  local name=$1 port=$2 path=$3
  shift 3
  "$@" > "$work/$name.log" 2>&1 &
  started=$!
  pids+=("$started")
  for _ in $(seq 600); do
    curl -fs "http://127.0.0.1:$port$path" >/dev/null && return
    kill -0 "$started" 2>/dev/null || break
    sleep 0.1
  done
  echo "$name on port $port did not start" >&2
  cat "$work/$name.log" >&2
  exit 1
}
# wrk_figures LABEL WRK-ARGUMENTS...: one wrk run with --latency; prints
# "requests/s p50_us p99_us", and wrk's error lines, if any, on stderr.
wrk_figures() {
  local label=$1
  shift
  local out errors
  out=$(wrk --latency "$@")
  errors=$(awk '/Non-2xx|Socket errors/' <<<"$out")
  [ -z "$errors" ] || echo "  $label: $errors" >&2
  echo "$(awk '/^Requests\/sec:/ {print $2}' <<<"$out") $(awk '$1 == "50%" {print $2}' <<<"$out" | to_us) $(awk '$1 == "99%" {print $2}' <<<"$out" | to_us)"
}
# wrk's "99%  1.23ms" -> microseconds
to_us() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); print v } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v*1000 } else if (v ~ /s$/) { sub(/s$/,"",v); print v*1000000 } }'; }
# The median of numbers, one a line.
median() { sort -g | awk '{ a[NR]=$1 } END { if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
# Rate limits stay on (their check is part of what is measured), with
# budgets no benchmark reaches.
export BLAZE__RATE_LIMITS__REQUESTS_PER_MINUTE=1000000000000 BLAZE__RATE_LIMITS__TOKENS_PER_MINUTE=1000000000000
export BLAZE__RATE_LIMITS__ANONYMOUS_REQUESTS_PER_MINUTE=1000000000000
# warm_cache BODY PORT...: posts the chat BODY twice to each port; the first
# must compute it (x-blaze-cache: miss), the second be a memory hit.
warm_cache() {
  local body=$1 port expected got
  shift
  for port in "$@"; do
    for expected in miss hit-memory; do
      got=$(curl -s -o "$work/answer.json" -D - "http://127.0.0.1:$port/v1/chat/completions" \
        -H "Authorization: Bearer $BLAZE_BENCH_KEY" -H 'content-type: application/json' -d "$body" \
        | awk 'tolower($1) == "x-blaze-cache:" { sub(/\r$/, "", $2); print $2 }')
      [ "$got" = "$expected" ] || { echo "port $port answered x-blaze-cache: '$got', not $expected" >&2; cat "$work/answer.json" >&2; exit 1; }
    done
  done
}
# post_script BODY: a wrk script (on stdout) that POSTs BODY as JSON with
# the bench key.
post_script() {
  python3 - "$1" "$BLAZE_BENCH_KEY" <<'PY'
import json, sys
print('wrk.method = "POST"')
print('wrk.body = ' + json.dumps(sys.argv[1]))
print('wrk.headers["Content-Type"] = "application/json"')
print('wrk.headers["Authorization"] = ' + json.dumps("Bearer " + sys.argv[2]))
PY
}
# upstream_route REFERENCE_PORT: a Blaze config (on stdout) whose route
# `assistant` has one target, the upstream blaze-reference on that port.
upstream_route() {
  cat <<YAML
models:
  catalog:
    reference:
      kind: upstream
      base_url: http://127.0.0.1:$1/v1
      max_connections: 1024
gateway:
  probe_interval_s: 0
  routes:
    assistant:
      targets: [{model: reference}]
YAML
}
