"""Tool calling through the official OpenAI Python SDK, against a running
Blaze (BLAZE_BASE_URL, BLAZE_API_KEY). Run by tests/it/sdk.rs; each check
asserts, and the script exits non-zero on the first failure."""

import json
import os
from typing import Literal

import openai
from openai import OpenAI, pydantic_function_tool
from pydantic import BaseModel, Field

MODEL = "smollm2-135m-instruct"
client = OpenAI(base_url=os.environ["BLAZE_BASE_URL"], api_key=os.environ["BLAZE_API_KEY"], timeout=300, max_retries=0)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city today.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
messages = [{"role": "user", "content": "What is the weather in Paris?"}]

# A required call: finish_reason tool_calls, arguments that parse and hold
# the function's parameters.
completion = client.chat.completions.create(
    model=MODEL, messages=messages, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=120
)
choice = completion.choices[0]
assert choice.finish_reason == "tool_calls", choice
call = choice.message.tool_calls[0]
assert call.type == "function" and call.function.name == "get_weather", call
arguments = json.loads(call.function.arguments)
assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit"), arguments
assert len(arguments["city"]) <= 20, arguments
print("required:", call.function.name, call.function.arguments)

# Streamed through the SDK's stream helper: the same call, in deltas.
with client.chat.completions.stream(
    model=MODEL, messages=messages, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=120
) as stream:
    fragments = [event.arguments_delta for event in stream if event.type == "tool_calls.function.arguments.delta"]
    final = stream.get_final_completion()
assert len(fragments) > 1, fragments
streamed = final.choices[0].message.tool_calls[0]
assert (streamed.function.name, streamed.function.arguments) == (call.function.name, call.function.arguments), streamed
assert final.choices[0].finish_reason == "tool_calls", final
print("stream:", len(fragments), "fragments")


# parse() with a Pydantic tool: the SDK sends it strict and reads the
# arguments back into the model.
class GetWeather(BaseModel):
    city: str = Field(max_length=20)
    unit: Literal["celsius", "fahrenheit"]


parsed = client.chat.completions.parse(
    model=MODEL, messages=messages, tools=[pydantic_function_tool(GetWeather)], tool_choice="required",
    temperature=0, max_tokens=120,
)
parsed_call = parsed.choices[0].message.tool_calls[0]
assert isinstance(parsed_call.function.parsed_arguments, GetWeather), parsed_call
print("parse:", parsed_call.function.parsed_arguments)

# The round trip: the call and its result go back, the model answers.
messages.append(choice.message.model_dump(exclude_none=True))
messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 14, "sky": "rain"})})
answer = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], temperature=0, max_tokens=60)
assert answer.choices[0].message.content, answer
print("round trip:", answer.choices[0].message.content)

# Bad definitions: 400s the SDK raises as BadRequestError, with the field.
for tools, tool_choice, code, param in [
    ([{"type": "function", "function": {"name": "bad name"}}], "auto", "invalid_tools", "tools[0].function.name"),
    ([WEATHER, WEATHER], "auto", "invalid_tools", "tools[1].function.name"),
    ([WEATHER], {"type": "function", "function": {"name": "other"}}, "invalid_tool_choice", "tool_choice.function.name"),
]:
    try:
        client.chat.completions.create(model=MODEL, messages=messages[:1], tools=tools, tool_choice=tool_choice)
    except openai.BadRequestError as error:
        assert error.code == code, error.body
        assert error.param == param, error.body
    else:
        raise AssertionError(f"{tools} was accepted")
print("errors: ok")
