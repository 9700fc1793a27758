"""Quantisation recipes: a default weight type plus per-tensor overrides.

A recipe says how each weight matrix is stored. Overrides are written as
``PATTERN=SPEC`` pairs separated by commas, or as a JSON object:

    token_embd=q4,output=q4,ffn_down=+1,blk.0.*=q4:g32:asym,attn_q=f16

PATTERN matches a tensor's short name (``ffn_down`` for ``blk.3.ffn_down.weight``),
its full name with or without ``.weight``, or a shell glob over the full name.
SPEC is a type (``q1``..``q4``, ``tq``, ``f16``, ``f32`` to keep it float), or
``+N``/``-N`` bits relative to the recipe's type (q1..q4 ladder, clamped),
optionally followed by ``:gNN`` (group size), ``:asym``/``:sym`` and ``:k``/``:kNNN``
(two-level scales with super-blocks of 256 / NNN weights) or ``:flat`` (fp16 scales). Later
overrides win over earlier ones, user overrides over the defaults.

Groups are asymmetric (scale and offset) by default for q1..q4 and symmetric
for tq; see :func:`default_asym` for why. q1..q3 use two-level scales by default
(:func:`default_super_block`).

Default overrides per type (keep the most sensitive tensors wider; measured on
SmolLM2-135M with GPTQ, docs/benchmarks-history.md "GPTQ calibration and recipes"):

    q4: none
    q3: output, attn_v, ffn_down at q4 (GPTQ 54.7 at 4.44 bpw against 81.4 at 4.22 bpw
        with the head alone: 0.67x the perplexity for 5% more bits). The embedding stays at q3
        unless it is also the head (a tied model, no output.weight: then it takes the head's
        spec, as llama.cpp does): rows are looked up, not multiplied, and on
        Qwen2.5-Coder-1.5B with the imatrix this recipe is 21.11 perplexity at 835 MB against
        llama.cpp Q3_K_S's 21.66 at 861 MB, where the embedding at q4 (+29 MB) would be larger
        than Q3_K_S (docs/BENCHMARKS.md "Size/perplexity front (session 6)")
    q2: token_embd, output, attn_v, ffn_down at q4 (GPTQ 319.7 at 3.87 bpw against 411.7 at
        3.68 bpw with ffn_down at q3)
    q1: token_embd, output at q4; attn_v, ffn_down at q3
    tq: token_embd, output at q4
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from typing import Any

from edgelut.kernels import GROUP_SIZES, QTYPES

__all__ = [
    "DEFAULT_OVERRIDES",
    "METHODS",
    "Recipe",
    "TensorSpec",
    "default_asym",
    "default_super_block",
    "parse_overrides",
    "qtype_for_bits",
]

METHODS = ("rtn", "gptq", "ternary")
FLOAT_SPECS = ("f16", "f32")
LADDER = ("q1", "q2", "q3", "q4")

DEFAULT_OVERRIDES: dict[str, dict[str, str]] = {
    "q4": {},
    "q3": {"output": "q4", "attn_v": "q4", "ffn_down": "q4"},
    "q2": {"token_embd": "q4", "output": "q4", "attn_v": "q4", "ffn_down": "q4"},
    "q1": {"token_embd": "q4", "output": "q4", "attn_v": "q3", "ffn_down": "q3"},
    "tq": {"token_embd": "q4", "output": "q4"},
}


def default_asym(qtype: str) -> bool:
    """Asymmetric groups unless ternary.

    The symmetric form w = scale * (code - CENTER) has no zero level for q1..q4
    (CENTER is a half integer), so every small weight is pushed out to +-scale/2;
    at 3 bits that costs SmolLM2-135M perplexity ~38k vs ~230 asymmetric
    (RTN g64, Lee corpus, ctx 512). The asymmetric form's offset places the
    levels on the group's actual range. Ternary keeps BitNet's symmetric absmean.
    """
    return qtype != "tq"


def default_super_block(qtype: str) -> int:
    """Two-level scales (quantize/twolevel.py) for q1..q3, fp16 group scales for q4 and tq.

    Below 4 bits the fp16 scale and min of every group are a third or more of
    the file (1.0 of q2 g32's 3.0 bits per weight); 4-bit sub-scales under a
    super-block's fp16 pair cost 0.375. q4 stays one-level: a Q4_0/Q4_1 source
    is imported losslessly into exactly that form.
    """
    return 256 if qtype in ("q1", "q2", "q3") else 0


def qtype_for_bits(bits: str | int | float) -> str:
    """'2' / 2 -> 'q2'; 'ternary', 'tq', '1.58' -> 'tq'."""
    text = str(bits).strip().lower()
    if text in ("tq", "ternary", "1.58", "1.6"):
        return "tq"
    if text.startswith("q"):
        text = text[1:]
    if text in ("1", "2", "3", "4"):
        return f"q{text}"
    raise ValueError(f"bits must be 1, 2, 3, 4 or ternary, got {bits!r}")


@dataclass(frozen=True)
class TensorSpec:
    """How one tensor is stored: a packed type with group and symmetry, or float."""

    qtype: str  # q1..q4, tq, f16, f32
    group_size: int = 64
    asym: bool = False
    super_block: int = 0  # two-level scales: weights per super-block (0 = fp16 per group)

    @property
    def is_float(self) -> bool:
        return self.qtype in FLOAT_SPECS

    @property
    def two_level(self) -> bool:
        return self.super_block > 0 and not self.is_float

    def __str__(self) -> str:
        if self.is_float:
            return self.qtype
        text = f"{self.qtype}:g{self.group_size}:{'asym' if self.asym else 'sym'}"
        return text + (f":k{self.super_block}" if self.two_level else "")


def parse_overrides(text: str | dict[str, str] | None) -> dict[str, str]:
    """'a=q4,b=+1' or '{"a": "q4"}' or a dict -> {pattern: spec}; validates every spec."""
    if not text:
        return {}
    if isinstance(text, dict):
        out = {str(k): str(v) for k, v in text.items()}
    elif text.lstrip().startswith("{"):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"recipe is not valid JSON: {e}") from e
        if not isinstance(loaded, dict):
            raise ValueError("a JSON recipe must be an object of pattern: spec")
        out = {str(k): str(v) for k, v in loaded.items()}
    else:
        out = {}
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            if "=" not in item:
                raise ValueError(f"recipe entry {item!r} is not PATTERN=SPEC")
            pattern, spec = (s.strip() for s in item.split("=", 1))
            out[pattern] = spec
    for spec in out.values():
        _apply_spec(spec, TensorSpec("q2", 32, asym=True))  # raises on a bad spec
    return out


def _apply_spec(spec: str, base: TensorSpec) -> TensorSpec:
    parts = [p.strip().lower() for p in spec.split(":")]
    head, opts = parts[0], parts[1:]
    qtype, group, asym, sb = base.qtype, base.group_size, base.asym, base.super_block
    asked_k = False
    if re.fullmatch(r"[+-]\d", head):
        if base.qtype not in LADDER:
            raise ValueError(f"relative spec {spec!r} needs a q1..q4 base type, got {base.qtype}")
        i = max(0, min(len(LADDER) - 1, LADDER.index(base.qtype) + int(head)))
        qtype = LADDER[i]
    elif head in FLOAT_SPECS:
        return TensorSpec(head, group, False)
    elif head in QTYPES:
        qtype = head
    else:
        raise ValueError(f"bad recipe spec {spec!r}: type must be q1..q4, tq, f16, f32 or +N/-N")
    if (qtype == "tq") != (base.qtype == "tq"):
        # Crossing between ternary and q1..q4 resets symmetry to the new type's default.
        asym = default_asym(qtype)
    for opt in opts:
        if opt in ("asym", "sym"):
            asym = opt == "asym"
        elif re.fullmatch(r"g\d+", opt) and int(opt[1:]) in GROUP_SIZES:
            group = int(opt[1:])
        elif opt == "k":
            sb, asked_k = 256, True
        elif re.fullmatch(r"k\d+", opt):
            sb, asked_k = int(opt[1:]), True
        elif opt == "flat":
            sb = 0
        else:
            raise ValueError(
                f"bad recipe option {opt!r} in {spec!r}: use g32/g64/g128, asym or sym, k/kNNN or flat"
            )
    if qtype == "tq" or not asym:
        if asked_k:
            raise ValueError(f"bad recipe spec {spec!r}: two-level scales need asymmetric q1..q4 groups")
        sb = 0  # two-level scales are asymmetric q1..q4 only
    if sb and (sb % group or sb > 4096):
        raise ValueError(
            f"bad recipe spec {spec!r}: the super-block must be a multiple of g{group} up to 4096"
        )
    return TensorSpec(qtype, group, asym, sb)


def _short(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) > 2:
        parts = parts[2:]
    if parts[-1] == "weight":
        parts = parts[:-1]
    return ".".join(parts)


def _matches(pattern: str, name: str) -> bool:
    base = name[: -len(".weight")] if name.endswith(".weight") else name
    return pattern in (_short(name), name, base) or fnmatch.fnmatchcase(name, pattern)


@dataclass
class Recipe:
    """method, default type/group/symmetry, and per-tensor overrides (defaults + user)."""

    method: str = "rtn"
    qtype: str = "q4"
    # g32 measures best at every width (SmolLM2, docs/benchmarks-history.md "Quality vs llama.cpp").
    group_size: int = 32
    # None = the type's default: asymmetric for q1..q4, symmetric (absmean) for tq.
    asym: bool | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    use_defaults: bool = True
    act_order: bool = False
    # Two-level scales' super-block (weights); None = default_super_block(qtype), 0 = fp16 group scales.
    super_block: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.qtype not in QTYPES:
            raise ValueError(f"unknown weight type {self.qtype!r}")
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"group size must be 32, 64 or 128, got {self.group_size}")
        if self.asym is None:
            self.asym = default_asym(self.qtype)
        if self.super_block is None:
            self.super_block = default_super_block(self.qtype) if self.asym else 0
        if self.super_block and (
            not self.asym
            or self.qtype == "tq"
            or self.super_block % self.group_size
            or self.super_block > 4096
        ):
            raise ValueError(
                f"super-block {self.super_block} needs asymmetric q1..q4 groups and a multiple of the group "
                f"size ({self.group_size}) up to 4096"
            )
        self.overrides = parse_overrides(self.overrides)
        base = TensorSpec(self.qtype, self.group_size, bool(self.asym), int(self.super_block or 0))
        for value in self.all_overrides().values():
            _apply_spec(value, base)  # raises now, naming the spec, not halfway through a conversion

    def all_overrides(self) -> dict[str, str]:
        merged = dict(DEFAULT_OVERRIDES.get(self.qtype, {})) if self.use_defaults else {}
        merged.update(self.overrides)
        return merged

    def spec_for(self, name: str, *, tied_head: bool = False) -> TensorSpec:
        """The storage spec of a weight matrix (1-D tensors are always stored float).

        ``tied_head``: the model has no output.weight, so the embedding is also the head and takes
        the head's spec, unless the user's own overrides name the embedding.
        """
        if tied_head and name == "token_embd.weight" and self.pinned_spec(name) is None:
            name = "output.weight"
        spec = TensorSpec(self.qtype, self.group_size, bool(self.asym), int(self.super_block or 0))
        base = spec
        for pattern, value in self.all_overrides().items():
            if _matches(pattern, name):
                spec = _apply_spec(value, base)
        return spec

    def pinned_spec(self, name: str) -> TensorSpec | None:
        """The spec the user's own overrides give a tensor, or None (defaults not applied)."""
        base = spec = TensorSpec(self.qtype, self.group_size, bool(self.asym), int(self.super_block or 0))
        hit = False
        for pattern, value in self.overrides.items():
            if _matches(pattern, name):
                spec, hit = _apply_spec(value, base), True
        return spec if hit else None

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "qtype": self.qtype,
            "group_size": self.group_size,
            "asym": self.asym,
            "act_order": self.act_order,
            "super_block": self.super_block,
            "overrides": self.all_overrides(),
        }
