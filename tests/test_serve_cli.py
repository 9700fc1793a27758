"""`edgelut serve` on a tiny random model whose template renders tools: tool calls, the API
key, CORS, and the command's own errors (bad model, taken port)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import pytest
from serve_helpers import ServerProcess, write_tiny_tools_model

KEY = "s3cret-key"
ORIGIN = "http://app.example"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "a forecast", "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]
ASK = [{"role": "user", "content": "Weather in Paris for 3 days?"}]


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Serving a GGUF by path converts it into the cache: keep the user's cache clean.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGELUT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_tools_model(tmp_path_factory.mktemp("serve") / "tiny-tools")


@pytest.fixture(scope="module")
def server(tiny: Path) -> Iterator[ServerProcess]:
    # The key comes from the environment, as a service manager would pass it.
    s = ServerProcess(tiny, "--cors", ORIGIN, env={"EDGELUT_API_KEY": KEY})
    try:
        s.wait_ready(120)
        yield s
    finally:
        s.stop()
    assert "Traceback" not in s.stderr, s.stderr


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_call(client: openai.OpenAI, choice) -> None:
    r = client.chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=120, temperature=0
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    (call,) = c.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        jsonschema.validate(args, WEATHER)
    else:
        assert call.function.name == "get_time" and args == {}


def test_forced_tool_call_streams(client: openai.OpenAI) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    stream = client.chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=TOOLS,
        tool_choice=choice,
        max_tokens=120,
        temperature=0,
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [tc.function.name for tc in calls] == ["get_weather"]
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_results_render_in_the_next_turn(client: openai.OpenAI) -> None:
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    r = client.chat.completions.create(
        model="tiny", messages=history, tools=TOOLS, max_tokens=4, temperature=0
    )
    assert r.choices[0].finish_reason in ("length", "stop", "tool_calls")


def test_bad_tools_are_400(server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    cases = [
        {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
        {"tools": [{"type": "retrieval"}]},
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        {"tools": TOOLS, "tool_choice": "sometimes"},
        {"tool_choice": "required"},
        {"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
    ]
    for extra in cases:
        status, _, reply = server.request("POST", "/v1/chat/completions", {"messages": ASK, **extra}, auth)
        assert status == 400 and reply["error"]["message"], (extra, reply)


def test_api_key(server: ServerProcess) -> None:
    body = {"prompt": "hi", "max_tokens": 1}
    assert server.request("POST", "/v1/completions", body)[0] == 401
    status, _, reply = server.request("POST", "/v1/completions", body, {"Authorization": "Bearer wrong"})
    assert status == 401 and reply["error"]["type"] == "authentication_error"
    assert server.request("POST", "/v1/completions", body, {"Authorization": f"Bearer {KEY}"})[0] == 200
    assert server.request("GET", "/health")[0] == 200  # health checks need no key
    bad = openai.OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_cors_only_for_the_named_origin(server: ServerProcess) -> None:
    pre = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    status, headers, _ = server.request("OPTIONS", "/v1/chat/completions", None, pre)
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN
    other = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    status, headers, _ = server.request("OPTIONS", "/v1/chat/completions", None, other)
    assert status == 400 and "access-control-allow-origin" not in headers


def _serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgelut.cli", "serve", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_missing_model_is_a_one_line_error(tmp_path: Path) -> None:
    r = _serve(str(tmp_path / "nope.elut"), "--port", "0")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_corrupt_model_stops_the_server_with_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    r = _serve(str(bad), "--port", "0")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(lines) == 1 and "bad.gguf" in lines[0] and "GGUF version" in lines[0], r.stderr


def test_taken_port_and_bad_flags(tiny: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        r = _serve(str(tiny), "--port", str(busy.getsockname()[1]))
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr
    assert _serve(str(tiny), "--port", "70000").returncode == 2
    assert _serve(str(tiny), "--max-queue", "0").returncode == 2
