"""Chat decode and prompt speed of a running server, over HTTP streaming.

    python3 load/bench/chat.py URL MODEL [PROMPT_WORDS] [MAX_TOKENS] [ROUNDS] [STREAMS]

One stream (or STREAMS concurrent ones) of a greedy completion of a prompt
of about PROMPT_WORDS words; prints time to first token, prompt tokens/s
(prompt tokens over time to first token) and decode tokens/s (completion
tokens after the first over the time after it), medians over ROUNDS;
completion_tokens is how many the model gave before it stopped (a greedy
answer may end before MAX_TOKENS).
Standard library only. The reference for the same GGUF is
../shared/anchors/bench_llama.py (llama.cpp through llama-cpp-python).
"""
import json
import os
import statistics
import sys
import threading
import time
import urllib.request


def stream_once(url, model, prompt, max_tokens):
    body = json.dumps({
        "model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
        "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True},
    }).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={
        "Content-Type": "application/json", "Authorization": "Bearer " + os.environ["BLAZE_BENCH_KEY"],
        # Every round generates: a greedy answer would otherwise come from
        # the response cache after the first.
        "Cache-Control": "no-cache",
    })
    started = time.perf_counter()
    first = None
    usage = None
    with urllib.request.urlopen(request, timeout=600) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if chunk.get("usage"):
                usage = chunk["usage"]
    ended = time.perf_counter()
    return started, first, ended, usage


def main():
    url, model = sys.argv[1], sys.argv[2]
    words = int(sys.argv[3]) if len(sys.argv) > 3 else 75
    max_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 128
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    streams = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    if not (1 <= rounds <= 20 and 1 <= streams <= 64 and 1 <= max_tokens <= 4096 and 1 <= words <= 4000):
        sys.exit("refusing absurd settings")
    prompt = "Summarize this: " + " ".join(["the quick brown fox jumps over the lazy dog"] * (words // 9 + 1))
    prompt = " ".join(prompt.split()[:words])
    ttfts, prompt_rates, decode_rates, aggregate, prompt_tokens, completion_tokens = [], [], [], [], [], []
    for _ in range(rounds):
        results = [None] * streams
        def run(index):
            results[index] = stream_once(url, model, prompt, max_tokens)
        threads = [threading.Thread(target=run, args=(index,)) for index in range(streams)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
        total = 0
        for started, first, ended, usage in results:
            total += usage["completion_tokens"]
            ttfts.append(first - started)
            prompt_tokens.append(usage["prompt_tokens"])
            completion_tokens.append(usage["completion_tokens"])
            prompt_rates.append(usage["prompt_tokens"] / (first - started))
            if usage["completion_tokens"] > 1:
                decode_rates.append((usage["completion_tokens"] - 1) / (ended - first))
        aggregate.append(total / wall)
    print(f"RESULT engine=blaze streams={streams} prompt_tokens={statistics.median(prompt_tokens):.0f} max_tokens={max_tokens} "
          f"completion_tokens={statistics.median(completion_tokens):.0f} "
          f"ttft_p50_ms={statistics.median(ttfts) * 1000:.1f} prompt_tok_per_s={statistics.median(prompt_rates):.1f} "
          f"decode_tok_per_s_per_stream={statistics.median(decode_rates):.1f} aggregate_tok_per_s={statistics.median(aggregate):.1f}")


if __name__ == "__main__":
    main()
