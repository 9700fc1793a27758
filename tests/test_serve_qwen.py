"""Tool calling end to end on a real model whose template supports tools (Qwen2.5-Coder-0.5B-Instruct,
4 bits): the template renders the tools, the model chooses to call one, the reply parses into
tool_calls, and the tool's result rendered in the next turn is used in the answer."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
import real_model
from serve_helpers import ServerProcess

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city name"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    s = ServerProcess(real_model.qwen_q4_file(), "--ctx", "2048")
    try:
        s.wait_ready(600)
        yield openai.OpenAI(base_url=s.base + "/v1", api_key="unused", max_retries=0, timeout=600)
    finally:
        s.stop()
    assert "Traceback" not in s.stderr, s.stderr


def test_qwen_calls_a_tool_and_uses_its_result(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
    r = client.chat.completions.create(
        model="qwen", messages=ask, tools=[WEATHER], temperature=0, max_tokens=64
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert "paris" in json.loads(call.function.arguments)["city"].lower()
    turn2 = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {
            "role": "tool",
            "tool_call_id": call.id,
            "content": json.dumps({"temperature_c": 31, "sky": "sunny"}),
        },
    ]
    r2 = client.chat.completions.create(
        model="qwen", messages=turn2, tools=[WEATHER], temperature=0, max_tokens=64
    )
    answer = r2.choices[0].message.content
    assert r2.choices[0].finish_reason == "stop" and "31" in answer, answer
