"""Constrained decoding with llguidance: JSON schemas and tool-call grammars as token masks.

llguidance (the grammar engine llama.cpp links) compiles a JSON schema or a
Lark grammar against the model's own ``tokenizers`` vocabulary and gives, at
each step, the set of tokens that keep the output inside the grammar. The
model's decode loop applies it as a mask before sampling
(``edgelut.model.TokenConstraint``), so a reply cannot leave the schema, and
once the grammar is complete only an end-of-sequence token is allowed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from edgelut.server.errors import bad_request

# Far below any real logit but finite (the sampler refuses infinities); stays finite
# after the sampler's division by any temperature the API allows (>= 0.01 in effect).
MASKED = -1e9

# Compact but readable JSON, and no free whitespace: a small model left free to
# emit whitespace can loop on it until max_tokens.
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class MatcherConstraint:
    """One request's grammar state (an llguidance LLMatcher) as a TokenConstraint."""

    def __init__(self, matcher: Any) -> None:
        self._m = matcher

    def mask(self, logits: np.ndarray) -> None:
        bits = np.frombuffer(self._m.compute_bitmask(), dtype=np.uint8)
        if self._m.is_error():
            raise ValueError(f"grammar: {self._m.get_error()}")
        allowed = np.unpackbits(bits, bitorder="little")
        n = min(len(allowed), logits.shape[0])
        logits[:n][allowed[:n] == 0] = MASKED
        logits[n:] = MASKED

    def advance(self, token: int) -> None:
        if not self._m.consume_token(int(token)):
            raise ValueError(f"grammar rejected token {token}: {self._m.get_error()}")

    def finished(self) -> bool:
        return bool(self._m.is_stopped())


class Grammars:
    """Builds request constraints for one model; the llguidance tokenizer is made once (about a second)."""

    def __init__(self, tokenizer_json: Callable[[], str], vocab_size: int, eos_ids: list[int]) -> None:
        self._json = tokenizer_json
        self._vocab = vocab_size
        self._eos = list(eos_ids)
        self._tok: Any = None
        self._lock = threading.Lock()

    def _tokenizer(self) -> Any:
        import llguidance

        with self._lock:
            if self._tok is None:
                self._tok = llguidance.LLTokenizer(self._json(), n_vocab=self._vocab, eos_token=self._eos)
            return self._tok

    def _matcher(self, grammar: str, param: str) -> MatcherConstraint:
        import llguidance

        tok = self._tokenizer()
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tok)
        if is_error:
            raise bad_request(f"'{param}' cannot be compiled: {messages[0]}", param, code="invalid_schema")
        m = llguidance.LLMatcher(tok, grammar, log_level=0)
        if m.is_error():
            raise bad_request(f"'{param}' cannot be compiled: {m.get_error()}", param, code="invalid_schema")
        return MatcherConstraint(m)

    def json_schema(self, schema: dict[str, Any], param: str = "response_format") -> MatcherConstraint:
        """Output that is one JSON value valid against ``schema``."""
        import llguidance

        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_STYLE)
        except ValueError as e:
            raise bad_request(
                f"'{param}' is not a valid JSON schema: {e}", param, code="invalid_schema"
            ) from None
        return self._matcher(grammar, param)

    def tool_call(self, call_schema: dict[str, Any], open_tag: str, close_tag: str) -> MatcherConstraint:
        """Output that is exactly one tool call: ``open_tag`` JSON(call_schema) ``close_tag``."""
        import llguidance

        schema = {**call_schema, "x-guidance": _JSON_STYLE}
        lark = f"start: {json.dumps(open_tag + chr(10))} call {json.dumps(chr(10) + close_tag)}\n"
        lark += f"call: %json {json.dumps(schema)}\n"
        return self._matcher(llguidance.LLMatcher.grammar_from_lark(lark), "tools")


def response_format_schema(rf: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema a response_format asks for (None: free text); 400 on a malformed one."""
    if rf is None:
        return None
    kind = rf.get("type")
    extra = set(rf) - {"type", "json_schema"}
    if extra:
        raise bad_request(f"response_format: unknown field '{sorted(extra)[0]}'", "response_format")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict):
            raise bad_request("response_format.json_schema must be an object", "response_format.json_schema")
        unknown = set(js) - {"name", "description", "schema", "strict"}
        if unknown:
            raise bad_request(
                f"response_format.json_schema: unknown field '{sorted(unknown)[0]}'",
                "response_format.json_schema",
            )
        schema = js.get("schema", {})
        if not isinstance(schema, dict):
            raise bad_request(
                "response_format.json_schema.schema must be an object", "response_format.json_schema"
            )
        return schema
    raise bad_request(
        "response_format.type must be 'text', 'json_object' or 'json_schema'", "response_format.type"
    )
