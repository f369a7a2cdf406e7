"""The table of figures that load/bench/all.sh writes, from the JSON lines
its benchmarks print, and the smoke run's gate.

    python3 load/bench/report.py FIGURES.jsonl META.json OUT.md [--readme README.md]
    python3 load/bench/report.py FIGURES.jsonl META.json OUT.md --gate RECORDED.jsonl

Each row below names a benchmark's figure, the reference it is compared
with (measured in the same run) and its target. A benchmark that did not
run is listed with the reason all.sh recorded. --readme replaces the part
of the README between its two `all.sh` markers with the table. --gate
(the smoke run) exits 1 when a figure is grossly off: under half its
target, or half its last recorded full-run figure where that is lower
(a target not met yet must not fail every run); for an upper bound, over
twice the target or twice the recorded figure, whichever is higher.
p99 figures are reported but not gated (too noisy in a 2 s round).
Standard library only.
"""
import json
import sys

AT_LEAST, AT_MOST, NONE = ">=", "<=", ""

# (benchmark, figure key, what it measures, Blaze's figure, the reference's
# figure, how the figure reads, target direction, target)
ROWS = [
    ("health", "rps_ratio", "GET /health requests/s, 64 connections",
     "blaze_rps", "reference_rps", "x", AT_LEAST, 0.9),
    ("health", "p99_ratio", "GET /health p99, us", "blaze_p99_us", "reference_p99_us", "x", AT_MOST, 1.2),
    ("auth", "api_key_ratio", "GET /v1/models with an API key, requests/s against /health",
     "api_key_rps", "health_rps", "x", AT_LEAST, 0.85),
    ("auth", "jwt_ratio", "GET /v1/models with a JWT, requests/s against /health",
     "jwt_rps", "health_rps", "x", AT_LEAST, 0.85),
    ("cache", "rps_ratio", "cached chat completion requests/s against the bare handler, 64 connections",
     "cached_rps", "reference_rps", "x", AT_LEAST, 0.5),
    ("cache", "p99_ratio", "cached chat completion p99, us, against the bare handler",
     "cached_p99_us", "reference_p99_us", "x", AT_MOST, 2.0),
    ("cache", "redis_added_p50_one_connection_us", "Redis tier: added p50, one connection, us",
     None, None, "", AT_MOST, 200),
    ("security", "api_ratio", "API-key requests/s during a login flood against none",
     "api_rps_flood", "api_rps_quiet", "x", AT_LEAST, 0.8),
    ("security", "flood_peak_rss_growth_mib", "login flood: peak resident memory growth, MiB",
     None, None, "", AT_MOST, 100),
    ("security", "body_ratio", "20 MiB chat body: peak resident memory growth over the body",
     None, None, "x", AT_MOST, 4.0),
    ("suite", "ratio", "blaze-load requests/s against wrk", "blaze_load_rps", "wrk_rps", "x", AT_LEAST, 0.8),
    ("usage", "rps_ratio", "usage ledger on, requests/s against off",
     "ledger_on_rps", "ledger_off_rps", "x", AT_LEAST, 0.95),
    ("gateway", "added_p50_us", "gateway: added p50, 64 connections, us",
     "proxied_p50_us", "direct_p50_us", "", AT_MOST, 200),
    ("gateway", "added_p50_open_us", "gateway: added p50, open loop at 2,000/s, us",
     None, None, "", NONE, None),
    ("gateway", "rps_ratio", "gateway: requests/s against the upstream direct",
     "proxied_rps", "direct_rps", "x", NONE, None),
    ("gateway", "gateway_cpu_us_per_request", "gateway: CPU per proxied request, us",
     None, None, "", NONE, None),
    ("litellm", "rps_ratio", "proxied chat completion requests/s against LiteLLM's",
     "blaze_rps", "litellm_rps", "x", AT_LEAST, 100),
    ("litellm", "p99_fraction", "proxied chat completion p99, us, against LiteLLM's",
     "blaze_p99_us", "litellm_p99_us", "x", AT_MOST, 0.05),
    ("litellm", "blaze_cpu_s_per_1000", "CPU seconds per 1,000 proxied requests (LiteLLM beside)",
     None, "litellm_cpu_s_per_1000", "", NONE, None),
    ("litellm", "blaze_rss_mib", "resident memory under load, MiB (LiteLLM beside)",
     None, "litellm_rss_mib", "", NONE, None),
    ("traces", "ratio_001", "traces sampled at 0.01, requests/s against off",
     "sampled_001_rps", "off_rps", "x", AT_LEAST, 0.9),
    ("traces", "ratio_1", "traces sampled at 1.0, requests/s against off",
     "sampled_1_rps", "off_rps", "x", NONE, None),
    ("websocket", "idle_kib_per_socket", "idle authenticated WebSocket: resident KiB per socket",
     None, None, "", AT_MOST, 16),
    ("websocket", "ws_per_s", "cached chat streams/s over WebSocket (SSE beside)",
     None, "sse_per_s", "", NONE, None),
    ("embeddings", "rate_ratio", "embeddings over HTTP, 64 clients: sentences/s against in-process batch 32",
     "http_per_s", "in_process_batch32_per_s", "x", AT_LEAST, 0.8),
    ("embeddings", "p99_to_batch32", "embeddings over HTTP: p99, ms, against the in-process batch-32 latency",
     "http_p99_ms", "in_process_batch32_ms", "x", AT_MOST, 2.0),
    ("embed_references", "t12_b1_vs_torch", "embeddings in-process, 12 tokens, batch 1: sentences/s against PyTorch",
     "t12_b1_blaze", "t12_b1_torch", "x", AT_LEAST, 1.5),
    ("embed_references", "t12_b8_vs_torch", "embeddings in-process, 12 tokens, batch 8: sentences/s against PyTorch",
     "t12_b8_blaze", "t12_b8_torch", "x", AT_LEAST, 1.5),
    ("embed_references", "t12_b32_vs_torch", "embeddings in-process, 12 tokens, batch 32: sentences/s against PyTorch",
     "t12_b32_blaze", "t12_b32_torch", "x", AT_LEAST, 1.5),
    ("embed_references", "t12_b1_vs_onnx", "embeddings in-process, 12 tokens, batch 1: against onnxruntime",
     "t12_b1_blaze", "t12_b1_onnx", "x", AT_LEAST, 0.8),
    ("embed_references", "t12_b32_vs_onnx", "embeddings in-process, 12 tokens, batch 32: against onnxruntime",
     "t12_b32_blaze", "t12_b32_onnx", "x", AT_LEAST, 1.0),
    ("embed_references", "t128_b1_vs_torch", "embeddings in-process, 128 tokens, batch 1: sentences/s against PyTorch",
     "t128_b1_blaze", "t128_b1_torch", "x", AT_LEAST, 1.5),
    ("embed_references", "t128_b8_vs_torch", "embeddings in-process, 128 tokens, batch 8: sentences/s against PyTorch",
     "t128_b8_blaze", "t128_b8_torch", "x", AT_LEAST, 1.5),
    ("embed_references", "t128_b32_vs_torch", "embeddings in-process, 128 tokens, batch 32: sentences/s against PyTorch",
     "t128_b32_blaze", "t128_b32_torch", "x", AT_LEAST, 1.5),
    ("embed_references", "t128_b1_vs_onnx", "embeddings in-process, 128 tokens, batch 1: against onnxruntime",
     "t128_b1_blaze", "t128_b1_onnx", "x", AT_LEAST, 0.8),
    ("embed_references", "t128_b32_vs_onnx", "embeddings in-process, 128 tokens, batch 32: against onnxruntime",
     "t128_b32_blaze", "t128_b32_onnx", "x", AT_LEAST, 1.0),
    ("chat", "decode_ratio", "decode tokens/s, one sequence, against llama.cpp",
     "blaze_decode_tok_s", "reference_decode_tok_s", "x", AT_LEAST, 1.0),
    ("chat", "prompt_ratio", "prompt tokens/s, 128 tokens, against llama.cpp",
     "blaze_prompt_tok_s", "reference_prompt_tok_s", "x", AT_LEAST, 1.0),
    ("chat", "streams_8_to_one", "8 sequences decoded together, aggregate against one",
     "streams_8_aggregate_tok_s", None, "x", AT_LEAST, 2.0),
    ("chat", "http_streams_1_ttft_p50_ms", "chat over HTTP: time to first token, ~100-token prompt, ms",
     None, None, "", NONE, None),
    ("prefix", "reuse_to_none_1", "prefix reuse: last-turn time to first token against none, 1 conversation",
     "reuse_ttft_ms_1", "no_reuse_ttft_ms_1", "x", AT_MOST, 0.2),
    ("prefix", "reuse_to_none_8", "prefix reuse: the same, 8 conversations at once",
     "reuse_ttft_ms_8", "no_reuse_ttft_ms_8", "x", AT_MOST, 0.2),
    ("reload", "chat_cold_ms", "first chat token after an idle unload, ms (warm beside)",
     None, "chat_warm_ms", "", NONE, None),
    ("reload", "embedding_cold_ms", "first embedding after an idle unload, ms (warm beside)",
     None, "embedding_warm_ms", "", NONE, None),
    ("guard", "ascii_100kb_mb_per_s", "guard scan, ASCII prose 100 KB, one core, MB/s",
     None, None, "", AT_LEAST, 300),
    ("guard", "mixed_100kb_mb_per_s", "guard scan, prose with accents and quotes 100 KB, MB/s",
     None, None, "", AT_LEAST, 300),
    ("guard", "adversarial_10mb_to_1mb", "guard scan, adversarial 10 MB against 1 MB (linear: 10)",
     None, None, "x", AT_MOST, 12),
    ("structured", "ratio", "decoding under a JSON Schema against free decoding",
     "json_schema_tok_s", "free_tok_s", "x", AT_LEAST, 0.8),
]


def load_figures(path, missing_ok=False):
    figures = {}
    try:
        lines = open(path).readlines()
    except FileNotFoundError:
        if missing_ok:
            return figures
        raise
    for line in lines:
        line = line.strip()
        if line.startswith("{"):
            record = json.loads(line)
            if "benchmark" in record:
                figures.setdefault(record["benchmark"], {}).update(record)
    return figures


def number(value, unit=""):
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    magnitude = abs(value)
    text = f"{value:,.0f}" if magnitude >= 100 else f"{value:.2f}" if magnitude >= 1 else f"{value:.3f}"
    return text + unit


def met(value, direction, target):
    if direction == AT_LEAST:
        return value >= target
    if direction == AT_MOST:
        return value <= target
    return None


def table(figures, meta):
    lines = [f"`load/bench/all.sh{' --smoke' if meta.get('smoke') else ''}` on {meta['date']}, commit "
             f"`{meta['commit']}`, {meta['cpu']} ({meta['cores']} cores{', ' + meta['features'] if meta.get('features') else ''}); "
             "each figure against its reference measured in the same run.", "",
             "| benchmark | measure | Blaze | reference | figure | target | met |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for benchmark, key, label, mine, reference, unit, direction, target in ROWS:
        record = figures.get(benchmark)
        if record is None or key not in record:
            continue
        value = record[key]
        verdict = met(value, direction, target)
        lines.append(f"| {benchmark} | {label} | {number(record.get(mine)) if mine else ''} | "
                     f"{number(record.get(reference)) if reference else ''} | {number(value, unit)} | "
                     f"{direction + ' ' + number(target, unit) if direction else ''} | "
                     f"{'' if verdict is None else 'yes' if verdict else '**no**'} |")
    skipped = meta.get("not_run", {})
    if skipped:
        lines += ["", "Not run:", ""] + [f"- {name}: {why}" for name, why in sorted(skipped.items())]
    return "\n".join(lines) + "\n"


def gate(figures, recorded):
    failures = []
    for benchmark, key, label, _, _, unit, direction, target in ROWS:
        value = figures.get(benchmark, {}).get(key)
        # A p99 over one round of 2 s on shared cores swings too far to
        # gate on; the rates and the medians beside it catch a broken path.
        if value is None or not direction or "p99" in key:
            continue
        last = recorded.get(benchmark, {}).get(key)
        if direction == AT_LEAST:
            floor = min(target, last) / 2 if last is not None else target / 2
            if value < floor:
                failures.append(f"{benchmark}: {label}: {number(value, unit)} under {number(floor, unit)}")
        else:
            ceiling = max(target, last) * 2 if last is not None else target * 2
            if value > ceiling:
                failures.append(f"{benchmark}: {label}: {number(value, unit)} over {number(ceiling, unit)}")
    return failures


def replace_readme(path, text):
    begin, end = "<!-- all.sh: begin -->", "<!-- all.sh: end -->"
    readme = open(path).read()
    start, stop = readme.find(begin), readme.find(end)
    if start < 0 or stop < start:
        sys.exit(f"{path} has no {begin} ... {end} block")
    open(path, "w").write(readme[:start + len(begin)] + "\n" + text + readme[stop:])


def main():
    if len(sys.argv) not in (4, 6):
        sys.exit(__doc__)
    figures = load_figures(sys.argv[1])
    meta = json.load(open(sys.argv[2]))
    text = table(figures, meta)
    open(sys.argv[3], "w").write(text)
    print(text)
    if len(sys.argv) == 6 and sys.argv[4] == "--readme":
        replace_readme(sys.argv[5], text)
    elif len(sys.argv) == 6 and sys.argv[4] == "--gate":
        failures = gate(figures, load_figures(sys.argv[5], missing_ok=True))
        for failure in failures:
            print("gross regression: " + failure)
        if failures:
            sys.exit(1)
        print("smoke gate: no figure under half its target (or half its last recorded figure)")
    elif len(sys.argv) == 6:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
