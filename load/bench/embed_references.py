"""The references Blaze's embedding engine is measured against, on the same
model files (Blaze's pulled all-MiniLM-L6-v2) and the same inputs:
sentence-transformers on PyTorch, and onnxruntime on an ONNX export of the
same weights (mean pooling and L2 normalization done in numpy).

    python embed_references.py inputs MODEL_DIR OUT_DIR
    python embed_references.py export MODEL_DIR OUT.onnx
    python embed_references.py bench torch MODEL_DIR FILE LABEL 1,8,32 SENTENCES REPEATS
    python embed_references.py bench onnx MODEL_DIR FILE LABEL 1,8,32 SENTENCES REPEATS --onnx OUT.onnx

`inputs` writes short.txt (12 tokens each, [CLS] and [SEP] included) and
long.txt (128 tokens each). `bench` prints one line per batch size in the
format of Blaze's embed bench (RESULT engine=... bs=... sent_per_s_median=...).
Both use THREADS compute threads (default 2).
"""

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

WORDS = (
    "the a system user request server data model query result cache index search document "
    "network latency memory thread process file storage quickly slowly returns builds sends "
    "reads writes stores finds ranks matches vector engine local remote small large fast simple "
    "daily weekly report team project customer order price market city river mountain weather "
    "morning evening book music film coffee garden kitchen window street train station because "
    "while after before under over with without into from about"
).split()


def threads():
    return int(os.environ.get("THREADS", "2"))


def make_inputs(model_dir, out_dir):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261207)

    def sentence(tokens):
        # Grows a sentence word by word until it has exactly `tokens`
        # tokens; starts again when a word overshoots.
        while True:
            words = []
            while True:
                words.append(rng.choice(WORDS))
                count = len(tokenizer.encode(" ".join(words).capitalize() + ".").ids)
                if count == tokens:
                    return " ".join(words).capitalize() + "."
                if count > tokens:
                    break

    for name, tokens, count in (("short", 12, 256), ("long", 128, 128)):
        lines = [sentence(tokens) for _ in range(count)]
        (out / f"{name}.txt").write_text("\n".join(lines) + "\n")
        print(f"{name}: {count} sentences of {tokens} tokens", file=sys.stderr)


def export(model_dir, out_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir).eval()

    class LastHidden(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    ids = torch.ones(2, 16, dtype=torch.long)
    axes = {name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask", "token_type_ids")}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        LastHidden(model),
        (ids, torch.ones_like(ids), torch.zeros_like(ids)),
        out_path,
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )


def torch_embedder(model_dir):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads())
    model = SentenceTransformer(model_dir, device="cpu")

    def embed(texts):
        with torch.inference_mode():
            return model.encode(texts, batch_size=len(texts), normalize_embeddings=True)

    return embed, f"torch-{torch.__version__}"


def onnx_embedder(model_dir, onnx_path):
    import numpy as np
    import onnxruntime
    from tokenizers import Tokenizer

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.enable_truncation(256)

    def embed(texts):
        encoded = tokenizer.encode_batch(texts)
        ids = np.array([item.ids for item in encoded], dtype=np.int64)
        mask = np.array([item.attention_mask for item in encoded], dtype=np.int64)
        states = session.run(
            None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        )[0]
        weights = mask[..., None].astype(np.float32)
        vectors = (states * weights).sum(1) / weights.sum(1)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    return embed, f"onnxruntime-{onnxruntime.__version__}"


def bench(engine, model_dir, path, label, batches, sentences, repeats, onnx_path):
    if engine == "torch":
        embed, name = torch_embedder(model_dir)
    else:
        embed, name = onnx_embedder(model_dir, onnx_path)
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    data = [lines[index % len(lines)] for index in range(sentences)]
    for batch in batches:

        def run():
            started = time.perf_counter()
            for start in range(0, len(data), batch):
                embed(data[start : start + batch])
            return len(data) / (time.perf_counter() - started)

        run()
        rates = sorted(run() for _ in range(repeats))
        print(
            f"RESULT engine={engine} version={name} input={label} bs={batch} n={len(data)} "
            f"threads={threads()} sent_per_s_median={statistics.median(rates):.1f} "
            f"all=[{', '.join(f'{rate:.1f}' for rate in rates)}]",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    inputs = commands.add_parser("inputs")
    inputs.add_argument("model")
    inputs.add_argument("out")
    exporting = commands.add_parser("export")
    exporting.add_argument("model")
    exporting.add_argument("out")
    benching = commands.add_parser("bench")
    benching.add_argument("engine", choices=["torch", "onnx"])
    benching.add_argument("model")
    benching.add_argument("inputs")
    benching.add_argument("label")
    benching.add_argument("batches", type=lambda text: [int(value) for value in text.split(",")])
    benching.add_argument("sentences", type=int)
    benching.add_argument("repeats", type=int)
    benching.add_argument("--onnx")
    arguments = parser.parse_args()
    if arguments.command == "inputs":
        make_inputs(arguments.model, arguments.out)
    elif arguments.command == "export":
        export(arguments.model, arguments.out)
    else:
        if arguments.engine == "onnx" and not arguments.onnx:
            parser.error("bench onnx needs --onnx OUT.onnx")
        if not 1 <= arguments.sentences <= 100_000 or not 1 <= arguments.repeats <= 100:
            parser.error("SENTENCES must be 1..100000 and REPEATS 1..100")
        bench(
            arguments.engine,
            arguments.model,
            arguments.inputs,
            arguments.label,
            arguments.batches,
            arguments.sentences,
            arguments.repeats,
            arguments.onnx,
        )


if __name__ == "__main__":
    main()
