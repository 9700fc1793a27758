"""Request bodies of the OpenAI API, checked field by field into dataclasses.

Every field is checked for its type and range; a field the API does not have
is refused (a typo such as ``max_token`` would otherwise be ignored silently),
and a field the API has but this server cannot honour (``n`` > 1,
``logprobs``, ``logit_bias``, ...) is refused with a message naming
it instead of being ignored. ``top_k``, ``min_p`` and ``repeat_penalty`` are
and ``ignore_eos`` (for benchmarks) are accepted too, as llama.cpp's server does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgelut.model import GenerateOptions
from edgelut.server.errors import bad_request

MAX_STOP = 16  # stop strings per request (OpenAI allows 4; llama.cpp any number)


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 naming what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(
            f"the request body is not valid UTF-8 (byte {e.start})", code="invalid_utf8"
        ) from None
    if not text.strip():
        raise bad_request("the request body is empty; send a JSON object", code="invalid_json")
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# ---- field checks ---------------------------------------------------------------------------


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number"
    )


def _number(lo: float, hi: float) -> Callable[[str, Any], float]:
    def check(name: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad_request(f"'{name}' must be a number, got {_type_name(v)}", name)
        if not lo <= v <= hi:
            raise bad_request(f"'{name}' must be in [{lo:g}, {hi:g}], got {v}", name)
        return float(v)

    return check


def _integer(lo: int, hi: int | None = None) -> Callable[[str, Any], int]:
    def check(name: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad_request(f"'{name}' must be an integer, got {_type_name(v)}", name)
        if v < lo or (hi is not None and v > hi):
            bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise bad_request(f"'{name}' must be {bound}, got {v}", name)
        return v

    return check


def _boolean(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise bad_request(f"'{name}' must be a boolean, got {_type_name(v)}", name)
    return v


def _string(name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise bad_request(f"'{name}' must be a string, got {_type_name(v)}", name)
    return v


def _stop(name: str, v: Any) -> list[str]:
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request(f"'{name}' must be a string or an array of strings", name)
    if len(stops) > MAX_STOP:
        raise bad_request(f"'{name}' has {len(stops)} strings; at most {MAX_STOP}", name)
    return [s for s in stops if s]


def _only(value: Any, what: str) -> Callable[[str, Any], Any]:
    """A field accepted only at its neutral value (the feature is not implemented)."""

    def check(name: str, v: Any) -> Any:
        if v is None or v == value or (value == 0 and v == 0.0):
            return v
        raise bad_request(f"'{name}' is not supported by this server ({what})", name, code="unsupported")

    return check


def _object(name: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise bad_request(f"'{name}' must be an object, got {_type_name(v)}", name)
    return v


def _stream_options(name: str, v: Any) -> dict[str, Any]:
    v = _object(name, v)
    for k, x in v.items():
        if k != "include_usage":
            raise bad_request(f"'{name}.{k}' is not a known field", f"{name}.{k}")
        _boolean(f"{name}.{k}", x)
    return v


def _seed(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad_request(f"'{name}' must be an integer, got {_type_name(v)}", name)
    return v


# Fields of both endpoints: name -> check. A None value means "the default" for every field.
_SAMPLING: dict[str, Callable[[str, Any], Any]] = {
    "model": _string,
    "max_tokens": _integer(1),
    "temperature": _number(0.0, 2.0),
    "top_p": _number(0.0, 1.0),
    "top_k": _integer(0),
    "min_p": _number(0.0, 1.0),
    "repeat_penalty": _number(0.0, 10.0),
    "ignore_eos": _boolean,
    "seed": _seed,
    "stop": _stop,
    "n": _only(1, "only n=1: one choice per request"),
    "stream": _boolean,
    "stream_options": _stream_options,
    "user": _string,
    "presence_penalty": _number(-2.0, 2.0),
    "frequency_penalty": _number(-2.0, 2.0),
    "logit_bias": _only({}, "logit_bias"),
}

_CHAT_FIELDS = {
    **_SAMPLING,
    "messages": lambda n, v: v,  # checked by _messages
    "max_completion_tokens": _integer(1),
    "response_format": _object,
    "tools": lambda n, v: v,  # checked by the tools module
    "tool_choice": lambda n, v: v,
    "parallel_tool_calls": _boolean,
    "logprobs": _only(False, "logprobs"),
    "top_logprobs": _only(0, "logprobs"),
}

_COMPLETION_FIELDS = {
    **_SAMPLING,
    "prompt": lambda n, v: v,  # checked by _prompt
    "echo": _only(False, "echo"),
    "best_of": _only(1, "only best_of=1"),
    "logprobs": _only(0, "logprobs"),
    "suffix": _only("", "suffix"),
}


def _fields(body: dict[str, Any], spec: dict[str, Callable[[str, Any], Any]]) -> dict[str, Any]:
    out = {}
    for name, value in body.items():
        check = spec.get(name)
        if check is None:
            raise bad_request(f"unknown field '{name}'", name, code="unknown_field")
        out[name] = None if value is None else check(name, value)
    return out


# ---- requests --------------------------------------------------------------------------------


@dataclass
class GenerationRequest:
    """What both endpoints share: the generation options and how to answer."""

    options: GenerateOptions
    max_tokens: int | None  # None: up to the end of the context
    stream: bool = False
    include_usage: bool = False


@dataclass
class ChatRequest(GenerationRequest):
    messages: list[dict[str, Any]] = field(default_factory=list)
    response_format: dict[str, Any] | None = None
    tools: Any = None
    tool_choice: Any = None


@dataclass
class CompletionRequest(GenerationRequest):
    prompt: str | list[int] = ""


def _options(f: dict[str, Any]) -> GenerateOptions:
    o = GenerateOptions()
    names = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "ignore_eos")
    for name in (*names, "presence_penalty", "frequency_penalty"):
        if f.get(name) is not None:
            setattr(o, name, f[name])
    o.stop = f.get("stop") or []
    return o


def _common(f: dict[str, Any], max_tokens: int | None) -> dict[str, Any]:
    return {
        "options": _options(f),
        "max_tokens": max_tokens,
        "stream": bool(f.get("stream")),
        "include_usage": bool((f.get("stream_options") or {}).get("include_usage")),
    }


def _content(i: int, v: Any) -> str:
    """A message's content: a string, or an array of text parts (joined)."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        texts = []
        for j, part in enumerate(v):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise bad_request(
                    f"messages[{i}].content[{j}]: only text parts are supported", f"messages[{i}].content"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise bad_request(
        f"messages[{i}].content must be a string or an array of parts", f"messages[{i}].content"
    )


_ROLES = ("system", "developer", "user", "assistant", "tool")
_MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id", "refusal")


def _messages(v: Any) -> list[dict[str, Any]]:
    if not isinstance(v, list) or not v:
        raise bad_request("'messages' must be a non-empty array of messages", "messages")
    out = []
    for i, m in enumerate(v):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object", f"messages[{i}]")
        for k in m:
            if k not in _MESSAGE_FIELDS:
                raise bad_request(f"messages[{i}]: unknown field '{k}'", f"messages[{i}].{k}")
        role = m.get("role")
        if role not in _ROLES:
            raise bad_request(f"messages[{i}].role must be one of {', '.join(_ROLES)}", f"messages[{i}].role")
        msg: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": _content(i, m.get("content")),
        }
        if m.get("name") is not None:
            msg["name"] = _string(f"messages[{i}].name", m["name"])
        if m.get("tool_call_id") is not None:
            msg["tool_call_id"] = _string(f"messages[{i}].tool_call_id", m["tool_call_id"])
        if m.get("tool_calls"):
            msg["tool_calls"] = _tool_calls(i, m["tool_calls"])
        out.append(msg)
    return out


def _tool_calls(i: int, v: Any) -> list[dict[str, Any]]:
    """An assistant message's earlier tool calls, with arguments as objects (templates print them as JSON)."""
    where = f"messages[{i}].tool_calls"
    if not isinstance(v, list):
        raise bad_request(f"{where} must be an array", where)
    calls = []
    for call in v:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad_request(f"{where}: each call needs function.name", where)
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args or "{}")
            except json.JSONDecodeError:
                raise bad_request(f"{where}: function.arguments is not JSON", where) from None
        calls.append(
            {"id": call.get("id"), "type": "function", "function": {"name": fn["name"], "arguments": args}}
        )
    return calls


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    f = _fields(body, _CHAT_FIELDS)
    if "messages" not in body:
        raise bad_request("'messages' is required", "messages")
    max_tokens = f.get("max_completion_tokens") or f.get("max_tokens")
    return ChatRequest(
        **_common(f, max_tokens),
        messages=_messages(body["messages"]),
        response_format=f.get("response_format"),
        tools=f.get("tools"),
        tool_choice=f.get("tool_choice"),
    )


def _prompt(v: Any) -> str | list[int]:
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], (str, list)):
        v = v[0]  # a batch of one
    if isinstance(v, str):
        if not v:
            raise bad_request("'prompt' is empty", "prompt")
        return v
    if isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        return list(v)
    raise bad_request("'prompt' must be a non-empty string or an array of token ids (one prompt)", "prompt")


DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


def parse_completion(body: dict[str, Any]) -> CompletionRequest:
    f = _fields(body, _COMPLETION_FIELDS)
    if "prompt" not in body:
        raise bad_request("'prompt' is required", "prompt")
    return CompletionRequest(
        **_common(f, f.get("max_tokens") or DEFAULT_COMPLETION_TOKENS), prompt=_prompt(body["prompt"])
    )
