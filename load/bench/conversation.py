"""Time to first token of a long conversation's last turn, over HTTP.

    python3 load/bench/conversation.py URL MODEL [TURNS] [STREAMS] [HISTORY_WORDS] [SEED]

STREAMS conversations (each its own system message, so none shares a
prefix with another) run at once, turn by turn: each turn adds a user
message and the model's greedy answer (about 60 tokens together) to a
history that starts at about HISTORY_WORDS words, so that the last turn's
prompt holds about 1,500 tokens. Prints, per stream, the time to first
token of the last turn and its prompt and cached tokens; then their
median. SEED varies the system messages, so that a run does not find the
conversations of an earlier one in the server's cache.
Standard library only.
"""
import json
import os
import statistics
import sys
import threading
import time
import urllib.request


def stream_once(url, model, messages):
    body = json.dumps({
        "model": model, "messages": messages, "temperature": 0, "max_tokens": 32,
        "stream": True, "stream_options": {"include_usage": True},
    }).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={
        "Content-Type": "application/json", "Authorization": "Bearer " + os.environ["BLAZE_BENCH_KEY"],
        "Cache-Control": "no-cache",
    })
    started = time.perf_counter()
    first, text, usage = None, "", None
    with urllib.request.urlopen(request, timeout=600) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                if first is None:
                    first = time.perf_counter()
                text += chunk["choices"][0]["delta"]["content"]
            if chunk.get("usage"):
                usage = chunk["usage"]
    return (first or time.perf_counter()) - started, text, usage


QUESTIONS = [
    "What is the capital of France?", "How tall is the Eiffel Tower?", "Who painted the Mona Lisa?",
    "What river flows through Paris?", "Name a famous French cheese.", "When was the Louvre opened?",
    "What is the French word for bread?", "How long is the Seine?", "What is Versailles known for?",
    "Which sea borders the south of France?", "What is the population of Lyon?", "Name a French poet.",
]


def conversation(url, model, turns, history_words, stream, seed, results):
    rules = " ".join(f"Rule {rule} of notebook {seed}-{stream}: keep answers short and exact."
                     for rule in range(history_words // 10))
    messages = [{"role": "system", "content": "You are a helpful assistant. " + rules}]
    for turn in range(turns):
        messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
        ttft, text, usage = stream_once(url, model, messages)
        messages.append({"role": "assistant", "content": text})
    results[stream] = (ttft, usage["prompt_tokens"], usage.get("prompt_tokens_details", {}).get("cached_tokens", 0))


def main():
    url, model = sys.argv[1], sys.argv[2]
    turns = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    streams = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    history_words = int(sys.argv[5]) if len(sys.argv) > 5 else 600
    seed = sys.argv[6] if len(sys.argv) > 6 else "0"
    if not (1 <= turns <= 20 and 1 <= streams <= 16 and 10 <= history_words <= 2000):
        sys.exit("refusing absurd settings")
    results = [None] * streams
    threads = [threading.Thread(target=conversation, args=(url, model, turns, history_words, stream, seed, results))
               for stream in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if any(result is None for result in results):
        sys.exit("a conversation failed")
    for stream, (ttft, prompt, cached) in enumerate(results):
        print(f"stream {stream}: last turn ttft_ms={ttft * 1000:.1f} prompt_tokens={prompt} cached_tokens={cached}")
    median = statistics.median(result[0] for result in results)
    print(f"RESULT streams={streams} turns={turns} last_turn_ttft_ms={median * 1000:.1f} "
          f"prompt_tokens={statistics.median(r[1] for r in results):.0f} "
          f"cached_tokens={statistics.median(r[2] for r in results):.0f}")


if __name__ == "__main__":
    main()
