"""The Responses API through the official OpenAI Python SDK, against a
running Blaze (BLAZE_BASE_URL, BLAZE_API_KEY). Run by tests/it/sdk.rs; each
check asserts, and the script exits non-zero on the first failure."""

import json
import os
from typing import Literal

import openai
from openai import OpenAI
from pydantic import BaseModel, Field

MODEL = "smollm2-135m-instruct"
client = OpenAI(base_url=os.environ["BLAZE_BASE_URL"], api_key=os.environ["BLAZE_API_KEY"], timeout=300, max_retries=0)

# Text: instructions and a string input; the SDK's output_text and usage.
asked = dict(
    model=MODEL, instructions="Answer in one short sentence.", input="What is the capital of France?",
    temperature=0, max_output_tokens=30,
)
response = client.responses.create(**asked)
assert response.object == "response" and response.status in ("completed", "incomplete"), response
assert response.output_text, response
assert response.output[0].type == "message" and response.output[0].role == "assistant", response
assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0, response.usage
assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
print("text:", response.status, repr(response.output_text))

# Streamed through the SDK's helper: the text deltas add up to the same
# text, and the final response is the whole one.
with client.responses.stream(**asked) as stream:
    kinds = []
    deltas = []
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
    final = stream.get_final_response()
assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete"), kinds
assert "response.output_item.added" in kinds and "response.output_text.done" in kinds, kinds
assert "".join(deltas) == response.output_text, (deltas, response.output_text)
assert final.output_text == response.output_text and final.usage.output_tokens == response.usage.output_tokens
print("stream:", len(deltas), "deltas")

# A cut answer is incomplete, and says why.
short = client.responses.create(**{**asked, "max_output_tokens": 2})
assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens", short
print("incomplete:", short.incomplete_details.reason)


# Structured: parse() with a Pydantic model, as text.format json_schema.
class City(BaseModel):
    name: str = Field(max_length=20)
    country: Literal["France", "Italy", "Spain"]


parsed = client.responses.parse(
    model=MODEL, input="Name a city in France.", text_format=City, temperature=0, max_output_tokens=60
)
assert isinstance(parsed.output_parsed, City), parsed
print("parse:", parsed.output_parsed)

# Function tools: a required call, streamed as argument deltas; its
# result goes back with the call, and the model answers.
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city today.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}
conversation = [{"role": "user", "content": "What is the weather in Paris?"}]
called = client.responses.create(
    model=MODEL, input=conversation, tools=[WEATHER], tool_choice="required", temperature=0, max_output_tokens=120
)
calls = [item for item in called.output if item.type == "function_call"]
assert calls and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_"), called
arguments = json.loads(calls[0].arguments)
assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit"), arguments
print("call:", calls[0].name, calls[0].arguments)

fragments = []
with client.responses.stream(
    model=MODEL, input=conversation, tools=[WEATHER], tool_choice="required", temperature=0, max_output_tokens=120
) as stream:
    for event in stream:
        if event.type == "response.function_call_arguments.delta":
            fragments.append(event.delta)
    streamed = stream.get_final_response()
assert len(fragments) > 1 and "".join(fragments) == "".join(call.arguments for call in calls), fragments
streamed_calls = [(item.name, item.arguments) for item in streamed.output if item.type == "function_call"]
assert streamed_calls == [(call.name, call.arguments) for call in calls], streamed_calls
print("streamed call:", len(fragments), "fragments")

conversation += called.output
conversation.append(
    {"type": "function_call_output", "call_id": calls[0].call_id, "output": json.dumps({"temperature": 14})}
)
answer = client.responses.create(model=MODEL, input=conversation, tools=[WEATHER], temperature=0, max_output_tokens=60)
assert answer.output_text, answer
print("round trip:", repr(answer.output_text))

# Refusals: 400s the SDK raises as BadRequestError, with the field.
for extra, code, param in [
    ({"previous_response_id": "resp_123"}, "previous_response_not_found", "previous_response_id"),
    ({"tools": [{"type": "web_search"}]}, "invalid_tools", "tools[0].type"),
    ({"tools": [{"type": "function", "name": "bad name", "parameters": {"type": "object"}}]}, "invalid_tools", "tools[0].name"),
    ({"max_output_tokens": 0}, "invalid_max_tokens", "max_output_tokens"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "strict": True, "schema": {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}}}}, "unsupported_schema", "text.format.schema"),
]:
    try:
        client.responses.create(model=MODEL, input="hi", **extra)
    except openai.BadRequestError as error:
        assert error.code == code, error.body
        assert error.param == param, error.body
    else:
        raise AssertionError(f"{extra} was accepted")
print("errors: ok")
