"""First request to a model unloaded for being idle, against a warm one.

    python3 load/bench/reload.py URL ROUNDS

The server runs with `idle_unload_s` set on every model. Each round, for
each model: waits until it is unloaded (GET /v1/models/{id}), times the
first request (chat: time to first streamed token; embeddings: the whole
response), which loads the model again and waits for it, then times the
same request on the warm model. Prints each pair, then the medians and
their ratio. Standard library only.
"""
import json
import os
import statistics
import sys
import time
import urllib.request

HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["BLAZE_BENCH_KEY"],
           "Cache-Control": "no-cache"}


def call(url, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, headers=HEADERS)
    return urllib.request.urlopen(request, timeout=300)


def first_token_seconds(url, model):
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "temperature": 0,
            "max_tokens": 8, "stream": True}
    started = time.perf_counter()
    with call(url, "/v1/chat/completions", body) as response:
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    first = time.perf_counter() - started
                    for _ in response:
                        pass
                    return first
    raise SystemExit(f"{model}: no token streamed")


def embedding_seconds(url, model):
    started = time.perf_counter()
    with call(url, "/v1/embeddings", {"model": model, "input": "How long does a cold start take?"}) as response:
        response.read()
    return time.perf_counter() - started


def wait_unloaded(url, model):
    deadline = time.time() + 60
    while time.time() < deadline:
        with call(url, f"/v1/models/{model}") as response:
            if json.load(response)["blaze"]["state"] == "unloaded":
                return
        time.sleep(0.05)
    raise SystemExit(f"{model} was not unloaded within 60 s")


def main():
    url, rounds = sys.argv[1], int(sys.argv[2])
    with call(url, "/v1/models") as response:
        models = [(entry["id"], entry["blaze"]["kind"]) for entry in json.load(response)["data"]]
    figures = {"benchmark": "reload"}
    for model, kind in models:
        measure = first_token_seconds if kind == "chat" else embedding_seconds
        cold, warm = [], []
        for _ in range(rounds):
            wait_unloaded(url, model)
            cold.append(measure(url, model))
            warm.append(measure(url, model))
            print(f"{model} cold_ms {cold[-1] * 1000:.1f} warm_ms {warm[-1] * 1000:.1f}", flush=True)
        cold_ms, warm_ms = statistics.median(cold) * 1000, statistics.median(warm) * 1000
        print(f"RESULT {model} kind {kind} cold_median_ms {cold_ms:.1f} warm_median_ms {warm_ms:.1f} "
              f"ratio {cold_ms / warm_ms:.1f}x", flush=True)
        figures[f"{kind}_cold_ms"] = round(cold_ms, 1)
        figures[f"{kind}_warm_ms"] = round(warm_ms, 1)
    print(json.dumps(figures, separators=(",", ":")), flush=True)


main()
