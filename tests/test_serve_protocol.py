"""The server's request checking, tool-call parsing and loading state, without a model."""

from __future__ import annotations

import asyncio
import json

import pytest

from edgelut.server import Server, ServerConfig, create_app
from edgelut.server.errors import APIError
from edgelut.server.protocol import parse_chat, parse_completion, parse_json_body
from edgelut.server.tools import parse_reply, template_supports_tools

MSG = [{"role": "user", "content": "hi"}]


def test_chat_fields_become_options() -> None:
    r = parse_chat(
        {
            "model": "m",
            "messages": [
                {
                    "role": "developer",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
            "temperature": 0,
            "top_p": 0.5,
            "top_k": 3,
            "seed": 9,
            "stop": "x",
            "max_completion_tokens": 7,
            "stream": True,
            "stream_options": {"include_usage": True},
            "presence_penalty": 0.5,
            "frequency_penalty": -0.25,
            "user": "u",
        }
    )
    assert r.messages == [{"role": "system", "content": "ab"}]
    o = r.options
    assert (o.temperature, o.top_p, o.top_k, o.seed, list(o.stop)) == (0, 0.5, 3, 9, ["x"])
    assert (o.presence_penalty, o.frequency_penalty) == (0.5, -0.25)
    assert r.max_tokens == 7 and r.stream and r.include_usage


def test_defaults() -> None:
    r = parse_chat({"messages": MSG, "temperature": None})
    assert r.max_tokens is None and not r.stream and r.options.temperature == 0.8
    c = parse_completion({"prompt": ["one prompt"]})
    assert c.prompt == "one prompt" and c.max_tokens == 16
    assert parse_completion({"prompt": [1, 2, 3]}).prompt == [1, 2, 3]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MSG, "top_k": 1.5}, "top_k"),
        ({"messages": MSG, "seed": "1"}, "seed"),
        ({"messages": MSG, "stop": ["a"] * 17}, "stop"),
        ({"messages": MSG, "frequency_penalty": 3}, "frequency_penalty"),
        ({"messages": MSG, "logit_bias": {"1": 5}}, "logit_bias"),
        ({"messages": [{"role": "user", "content": 1}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "a", "extra": 1}]}, "messages[0].extra"),
        (
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}
                ]
            },
            None,
        ),
        ({"messages": MSG, "temperature": float("inf")}, "temperature"),
    ],
)
def test_bad_chat_fields(body: dict, param: str | None) -> None:
    with pytest.raises(APIError) as e:
        parse_chat(body)
    assert e.value.status == 400
    if param is not None:
        assert e.value.param == param


@pytest.mark.parametrize("raw", [b"\xff{}", b"  ", b"null", b'{"a": Infinity}', b"{1: 2}"])
def test_bad_bodies(raw: bytes) -> None:
    with pytest.raises(APIError) as e:
        parse_json_body(raw)
    assert e.value.status == 400 and e.value.body()["error"]["code"] in ("invalid_json", "invalid_utf8")


def test_tool_replies_parse() -> None:
    text = 'Sure.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    content, calls = parse_reply(text)
    assert content == "Sure."
    assert calls[0]["function"] == {"name": "f", "arguments": '{"x": 1}'}
    assert parse_reply("<tool_call>{not json}</tool_call>") == ("<tool_call>{not json}</tool_call>", [])
    two = parse_reply(
        '<tool_call>{"name": "a"}</tool_call><tool_call>{"name": "b", "arguments": {}}</tool_call>'
    )
    assert two[0] is None and [c["function"]["name"] for c in two[1]] == ["a", "b"]
    bare = '{"name": "f", "arguments": {"x": 1}}'
    assert parse_reply(bare, {"f"})[1][0]["function"]["name"] == "f" and parse_reply(bare, {"f"})[0] is None
    assert parse_reply(bare, {"g"}) == (bare, []) and parse_reply(bare) == (bare, [])
    assert parse_reply('{"name": "f", "arguments": 3}', {"f"})[1] == []
    assert template_supports_tools("{% if tools %}x{% endif %}")
    assert not template_supports_tools("{{ messages }}") and not template_supports_tools(None)


def _get(app, path: str) -> tuple[int, dict]:
    """One GET through the ASGI app, in process."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8080),
    }
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


def test_loading_is_503() -> None:
    app = create_app(Server(ServerConfig()))
    assert _get(app, "/health") == (503, {"status": "loading"})
    status, body = _get(app, "/v1/models")
    assert status == 503 and body["error"]["code"] == "loading"


@pytest.mark.parametrize("chat", [True, False])
def test_text_event_is_the_chunk_event_byte_for_byte(chat: bool) -> None:
    from edgelut.server.app import _Answer, _event

    answer = _Answer('model "x" \\ ü', chat)
    for piece in [
        "",
        " Paris",
        'quote " and \\ backslash',
        "line\nbreak\ttab",
        "\x00\x01 ctl",
        "日本語 🎉",
        "\ufffd",
    ]:
        assert answer.text_event(piece) == _event(answer.chunk(answer.delta(piece)))
        choice = json.loads(answer.text_event(piece)[6:])["choices"][0]
        assert (choice["delta"]["content"] if chat else choice["text"]) == piece
