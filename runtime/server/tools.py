"""Function calling: the ``tools`` of a request checked and handed to the chat template,
and the model's ``<tool_call>{...}</tool_call>`` replies parsed into OpenAI ``tool_calls``.

The tag format is the one Qwen2.5's template (and Hermes-style templates)
teach the model. ``tool_choice`` "auto" lets the model choose; "required" or a
named function constrains the reply to one call through the grammar engine,
with the arguments valid against the function's parameter schema.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from edgelut.server.errors import bad_request

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*" + re.escape(CLOSE), re.DOTALL)


@dataclass
class ToolPlan:
    """What a request's tools mean for this turn."""

    tools: list[dict[str, Any]]  # what the template renders (empty: no tools this turn)
    forced: dict[str, Any] | None  # the JSON schema one forced call must match, or None (model chooses)


def template_supports_tools(chat_template: str | None) -> bool:
    """A template that renders tools mentions the ``tools`` variable."""
    return bool(chat_template) and re.search(r"\btools\b", chat_template) is not None


def plan(tools: Any, tool_choice: Any, chat_template: str | None) -> ToolPlan:
    """Check ``tools`` and ``tool_choice``; 400 for malformed ones or a template without tools."""
    if tools is None:
        if tool_choice not in (None, "none", "auto"):
            raise bad_request("'tool_choice' needs 'tools'", "tool_choice")
        return ToolPlan([], None)
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array", "tools")
    functions: dict[str, dict[str, Any]] = {}
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
            raise bad_request(
                f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", f"tools[{i}]"
            )
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise bad_request(
                f"tools[{i}].function.name must be 1-64 letters, digits, _ . or -", f"tools[{i}]"
            )
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise bad_request(f"tools[{i}].function.parameters must be a JSON schema object", f"tools[{i}]")
        functions[name] = params
    if not tools:
        return ToolPlan([], None)
    if not template_supports_tools(chat_template):
        raise bad_request("this model's chat template does not support tools", "tools", code="unsupported")
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return ToolPlan([], None)
    if choice == "auto":
        return ToolPlan(tools, None)
    if choice == "required":
        return ToolPlan(tools, _any_call(functions))
    fn = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(fn, dict):
        name = fn.get("name")
        if name not in functions:
            raise bad_request(f"tool_choice names '{name}', which is not in 'tools'", "tool_choice")
        return ToolPlan(tools, _any_call({name: functions[name]}))
    raise bad_request(
        "'tool_choice' must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}",
        "tool_choice",
    )


def _any_call(functions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The schema of one call of any of ``functions``: {"name": ..., "arguments": {...}}."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": params},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, params in functions.items()
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _call(obj: Any, names: set[str] | None) -> dict[str, Any] | None:
    """An OpenAI tool call from {"name": ..., "arguments": {...}}, or None if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if names is not None and obj["name"] not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, dict):
        return None
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)},
    }


def parse_reply(text: str, names: set[str] | None = None) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) of a reply; text that is not a well-formed call stays content.

    Calls are ``<tool_call>{...}</tool_call>`` blocks, or, as small models often
    answer, a reply that is nothing but one such JSON object naming one of the
    request's tools (``names``).
    """
    calls = []
    for m in _CALL.finditer(text):
        try:
            call = _call(json.loads(m.group(1)), None)
        except json.JSONDecodeError:
            continue
        if call is not None:
            calls.append(call)
    if calls:
        rest = _CALL.sub("", text).strip()
        return (rest or None), calls
    if names and text.lstrip().startswith("{"):
        try:
            bare = _call(json.loads(text), names)
        except json.JSONDecodeError:
            bare = None
        if bare is not None:
            return None, [bare]
    return text, []


def tool_names(tools: list[dict[str, Any]]) -> set[str]:
    return {t["function"]["name"] for t in tools}
