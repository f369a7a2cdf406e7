"""Structured outputs through the official OpenAI Python SDK, against a
running Blaze (BLAZE_BASE_URL, BLAZE_API_KEY). Run by tests/it/sdk.rs;
each check asserts, and the script exits non-zero on the first failure."""

import json
import os
import re

import openai
from openai import OpenAI
from pydantic import BaseModel, Field

MODEL = "smollm2-135m-instruct"
client = OpenAI(base_url=os.environ["BLAZE_BASE_URL"], api_key=os.environ["BLAZE_API_KEY"], timeout=300, max_retries=0)


class Person(BaseModel):
    name: str = Field(max_length=16)
    age: int = Field(ge=0, le=120)
    city: str = Field(max_length=16)


def ask(content):
    return [{"role": "user", "content": content}]


# parse(): the SDK sends the Pydantic model as a strict json_schema and
# reads the answer back into it.
completion = client.chat.completions.parse(
    model=MODEL, messages=ask("Describe a person as JSON."), response_format=Person, temperature=0, max_tokens=200
)
choice = completion.choices[0]
assert choice.finish_reason == "stop", choice
assert isinstance(choice.message.parsed, Person), choice.message
print("parse:", choice.message.parsed)

# Streamed through the SDK's stream helper: the same object, in deltas.
with client.chat.completions.stream(
    model=MODEL, messages=ask("Describe a person as JSON."), response_format=Person, temperature=0, max_tokens=200
) as stream:
    deltas = [event.delta for event in stream if event.type == "content.delta"]
    final = stream.get_final_completion()
assert len(deltas) > 1, deltas
assert "".join(deltas) == choice.message.content
assert final.choices[0].message.parsed == choice.message.parsed
print("stream:", len(deltas), "deltas")

# json_object, and Blaze's extension through extra_body.
answer = client.chat.completions.create(
    model=MODEL, messages=ask("What is the capital of France? Answer in JSON."), response_format={"type": "json_object"},
    temperature=0, max_tokens=300,
)
assert isinstance(json.loads(answer.choices[0].message.content), dict), answer
choices = ["Paris", "London", "Berlin"]
answer = client.chat.completions.create(
    model=MODEL, messages=ask("What is the capital of France?"), temperature=0,
    extra_body={"structured_outputs": {"choice": choices}},
)
assert answer.choices[0].message.content in choices, answer
answer = client.completions.create(
    model=MODEL, prompt="Order number:", temperature=0, max_tokens=20,
    extra_body={"structured_outputs": {"regex": " [A-Z]{3}-[0-9]{4}"}},
)
assert re.fullmatch(r" [A-Z]{3}-[0-9]{4}", answer.choices[0].text), answer
print("json_object, choice, regex: ok")

# A schema the grammar cannot enforce, and a malformed format: 400s the
# SDK raises as BadRequestError, with the field at fault.
for response_format, code, param in [
    (
        {"type": "json_schema", "json_schema": {"name": "n", "strict": True,
                                                "schema": {"type": "integer", "multipleOf": 3}}},
        "unsupported_schema",
        "response_format.json_schema.schema",
    ),
    ({"type": "json_schema", "json_schema": {"schema": {}}}, "invalid_response_format", "response_format.json_schema.name"),
    ({"type": "yaml"}, "invalid_response_format", "response_format.type"),
]:
    try:
        client.chat.completions.create(model=MODEL, messages=ask("hi"), response_format=response_format)
    except openai.BadRequestError as error:
        assert error.code == code, error.body
        assert error.param == param, error.body
    else:
        raise AssertionError(f"{response_format} was accepted")
print("errors: ok")
