"""n choices and log probabilities through the official OpenAI Python SDK,
against a running Blaze (BLAZE_BASE_URL, BLAZE_API_KEY), JSON and
streamed. Run by tests/it/sdk.rs; each check asserts, and the script exits
non-zero on the first failure."""

import os

import openai
from openai import OpenAI

MODEL = "smollm2-135m-instruct"
client = OpenAI(base_url=os.environ["BLAZE_BASE_URL"], api_key=os.environ["BLAZE_API_KEY"], timeout=300, max_retries=0)
messages = [{"role": "user", "content": "Write one line about the sea."}]

# n: three choices, choice i the answer of seed 7 + i.
completion = client.chat.completions.create(model=MODEL, messages=messages, n=3, seed=7, temperature=1.0, max_tokens=12)
assert [choice.index for choice in completion.choices] == [0, 1, 2], completion
texts = [choice.message.content for choice in completion.choices]
for index, text in enumerate(texts):
    alone = client.chat.completions.create(model=MODEL, messages=messages, seed=7 + index, temperature=1.0, max_tokens=12)
    assert alone.choices[0].message.content == text, (index, alone, text)
print("n:", texts)

# Streamed: each chunk names its choice; the pieces add up per choice.
streamed = ["", "", ""]
usage = None
for chunk in client.chat.completions.create(
    model=MODEL, messages=messages, n=3, seed=7, temperature=1.0, max_tokens=12, stream=True,
    stream_options={"include_usage": True},
):
    for choice in chunk.choices:
        streamed[choice.index] += choice.delta.content or ""
    usage = chunk.usage or usage
assert streamed == texts, (streamed, texts)
assert usage.completion_tokens == completion.usage.completion_tokens, usage
print("n streamed: ok")

# Log probabilities with alternatives, whole and streamed: the same entries.
asked = dict(model=MODEL, messages=messages, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
whole = client.chat.completions.create(**asked)
entries = whole.choices[0].logprobs.content
assert len(entries) == whole.usage.completion_tokens, whole
for entry in entries:
    assert entry.logprob <= 0 and len(entry.top_logprobs) == 3, entry
    assert entry.top_logprobs[0].token == entry.token, entry
streamed_entries = []
for chunk in client.chat.completions.create(**asked, stream=True):
    if chunk.choices and chunk.choices[0].logprobs:
        streamed_entries += chunk.choices[0].logprobs.content
assert [(entry.token, entry.logprob) for entry in streamed_entries] == [(entry.token, entry.logprob) for entry in entries]
print("logprobs:", [(entry.token, round(entry.logprob, 3)) for entry in entries[:3]])

# Completions' integer logprobs.
text = client.completions.create(model=MODEL, prompt="The sea is", temperature=0, max_tokens=4, logprobs=2)
assert len(text.choices[0].logprobs.tokens) == text.usage.completion_tokens, text
print("completions logprobs: ok")

# Out of range: 400s the SDK raises, with the field.
for extra, code, param in [({"n": 9}, "invalid_n", "n"), ({"logprobs": True, "top_logprobs": 21}, "invalid_logprobs", "top_logprobs")]:
    try:
        client.chat.completions.create(model=MODEL, messages=messages, **extra)
    except openai.BadRequestError as error:
        assert error.code == code and error.param == param, error.body
    else:
        raise AssertionError(f"{extra} was accepted")
print("errors: ok")
