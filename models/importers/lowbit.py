"""Trained low-bit checkpoints in Hugging Face safetensors: GPTQ and AWQ layers -> edgelut codes.

A GPTQ (AutoGPTQ / GPTQModel / transformers) or AWQ (AutoAWQ GEMM) checkpoint
stores each linear layer as integer codes ``q``, per-group zero points ``z``
and fp16 scales ``s``: ``w = s * (q - z)``. edgelut's asymmetric groups store
``w = scale * code + min``, so a layer maps onto them with the same codes, the
same scales and ``min = -z * s``, without re-quantising:

* codes and scales are carried bit for bit;
* ``min = -z * s`` is exact when it fits fp16, which it always does for
  symmetric checkpoints (``z = 2^(bits-1)``: a power-of-two multiple) and
  otherwise when the product needs at most fp16's 11 significant bits; the
  rest are rounded to the nearest fp16 (error at most 2^-12 |z s|), and the
  import counts them (``edgelut info`` shows the count);
* a checkpoint group of 32/64/128 columns is an edgelut group; a larger one
  (256, ..., or one per row, ``group_size = -1``) is cut into groups of 128
  with the scale repeated, which is the same matrix;
* act-order (``desc_act``) checkpoints have a ``g_idx`` that is not monotone:
  a column's group is not its position / group size. For ``down_proj`` the
  columns are sorted by group, and the rows of ``gate_proj`` and ``up_proj``
  get the same permutation, so the FFN computes the same function with
  contiguous groups (still exact, no engine change). Any other layer's input
  is the residual stream or the attention heads, which cannot be permuted
  per layer; those layers are dequantised exactly and re-quantised by
  edgelut at the checkpoint's width (not bit-exact; the import says which).

BitNet b1.58 checkpoints in transformers' layout (``quant_method: bitnet``:
ternary codes packed four to a byte down the output rows, one ``weight_scale``
per tensor) map onto the ternary type "tq" with the codes as they are and the
per-tensor scale repeated per group of 128 (exact when the scale is an fp16
number; otherwise rounded, and counted).

8-bit layers have no edgelut packed type: they are dequantised exactly and
the recipe quantises them (the import says so).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LayerCodes",
    "QuantFormat",
    "dequantize_checkpoint",
    "exact_layer",
    "quant_format",
    "unpack_awq",
    "unpack_bitstream",
]

# Widths with an edgelut packed type of the same levels (the code range 0..2^bits-1).
PACKED_BITS = {2: "q2", 3: "q3", 4: "q4"}
GPTQ_BITS = (2, 3, 4, 8)
# AutoAWQ's GEMM layout puts logical column order[i] of each 8 in nibble i of a word.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
EDGELUT_GROUPS = (128, 64, 32)
TERNARY_GROUP = 128  # a per-tensor BitNet scale is repeated over groups of this size


@dataclass(frozen=True)
class QuantFormat:
    """The ``quantization_config`` of a checkpoint, as far as the import needs it."""

    method: str  # "gptq" or "awq"
    bits: int
    group_size: int  # -1: one group per row
    sym: bool = True
    desc_act: bool = False
    v1_zeros: bool = True  # GPTQ v1 stores z - 1 (the original AutoGPTQ off-by-one)
    zero_point: bool = True  # AWQ: asymmetric (qzeros present)
    version: str = ""  # AWQ kernel layout ("gemm")
    linear_class: str = ""  # BitNet: "bitlinear" divides by weight_scale, "autobitlinear" multiplies

    def describe(self) -> dict[str, Any]:
        if self.method == "bitnet":
            return {"format": "bitnet", "bits": 1.58, "group_size": -1, "linear_class": self.linear_class}
        out: dict[str, Any] = {"format": self.method, "bits": self.bits, "group_size": self.group_size}
        if self.method == "gptq":
            out |= {
                "sym": self.sym,
                "desc_act": self.desc_act,
                "checkpoint_format": "gptq" if self.v1_zeros else "gptq_v2",
            }
        else:
            out |= {"zero_point": self.zero_point, "version": self.version}
        return out


def quant_format(cfg: dict[str, Any], directory: Path) -> QuantFormat | None:
    """The checkpoint's ``quantization_config`` (config.json, or quantize_config.json), or None."""
    q = cfg.get("quantization_config")
    where = "config.json quantization_config"
    side = directory / "quantize_config.json"
    if q is None and side.is_file():
        try:
            q = json.loads(side.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{side}: not valid JSON ({e})") from e
        where = "quantize_config.json"
        q.setdefault("quant_method", "gptq")  # AutoGPTQ's side file predates the key
    if q is None:
        return None
    if not isinstance(q, dict):
        raise ValueError(f"{directory}: {where} is not an object")
    method = str(q.get("quant_method", "")).lower()
    if method not in ("gptq", "awq", "bitnet"):
        raise ValueError(
            f"{directory}: quant_method {method!r} in {where} is not supported (gptq, awq, bitnet)"
        )
    if method == "bitnet":
        linear = str(q.get("linear_class", "bitlinear")).lower()
        if linear not in ("bitlinear", "autobitlinear") or q.get("quantization_mode", "offline") != "offline":
            raise ValueError(
                f"{directory}: BitNet {linear} {q.get('quantization_mode')!r} is not supported "
                "(offline bitlinear or autobitlinear)"
            )
        return QuantFormat("bitnet", 2, -1, linear_class=linear)
    try:
        bits = int(q.get("bits", q.get("w_bit", 4)))
        group = int(q.get("group_size", q.get("q_group_size", 128)))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{directory}: bits/group_size in {where} are not integers") from e
    if method == "gptq":
        if bits not in GPTQ_BITS:
            raise ValueError(f"{directory}: GPTQ with {bits} bits is not supported (2, 3, 4, 8)")
        fmt = str(q.get("checkpoint_format", q.get("format", "gptq"))).lower()
        if fmt not in ("gptq", "gptq_v2"):
            raise ValueError(f"{directory}: GPTQ checkpoint_format {fmt!r} is not supported (gptq, gptq_v2)")
        return QuantFormat(
            "gptq",
            bits,
            group,
            sym=bool(q.get("sym", True)),
            desc_act=bool(q.get("desc_act", False)),
            v1_zeros=fmt == "gptq",
        )
    version = str(q.get("version", "gemm")).lower()
    if version != "gemm" or bits != 4:
        raise ValueError(
            f"{directory}: AWQ {version} with {bits} bits is not supported (the 4-bit GEMM layout)"
        )
    return QuantFormat("awq", bits, group, zero_point=bool(q.get("zero_point", True)), version=version)


def unpack_bitstream(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Rows of int32 words, each row one little-endian stream of ``bits``-bit values -> (rows, count) int32.

    GPTQ packs 2/4/8-bit values 32/bits to a word, lowest bits first, and 3-bit
    values 32 to three words with values crossing word boundaries; both are
    this one stream (value i at bit 3i of the row's words in order).
    """
    w = np.ascontiguousarray(words).astype("<i4", copy=False).view(np.uint8)
    w = w.reshape(words.shape[0], -1)
    stream = np.unpackbits(w, axis=1, bitorder="little")
    if stream.shape[1] < count * bits:
        raise ValueError(f"{stream.shape[1]} bits hold fewer than {count} values of {bits} bits")
    vals = stream[:, : count * bits].reshape(words.shape[0], count, bits).astype(np.int32)
    return vals @ (np.int32(1) << np.arange(bits, dtype=np.int32))


def unpack_awq(words: np.ndarray) -> np.ndarray:
    """AWQ GEMM words (rows, C/8) -> (rows, C) 4-bit values in logical column order."""
    w = np.ascontiguousarray(words).astype(np.int32).view(np.uint32)
    nib = (w[..., None] >> (4 * np.arange(8, dtype=np.uint32))) & 0xF  # (rows, C/8, 8): nibble i
    out = np.empty_like(nib)
    out[..., list(AWQ_ORDER)] = nib
    return out.reshape(words.shape[0], -1).astype(np.int32)


@dataclass
class LayerCodes:
    """One imported layer: the exact float weights and, when they map exactly, edgelut's codes."""

    weight: np.ndarray  # (N, K) float32: s * (q - z), the numpy dequantisation
    qtype: str | None = None  # q2/q3/q4 (None: no packed type, e.g. 8 bits)
    group_size: int = 128
    codes: np.ndarray | None = None  # (N, K) int8, None when not exact (act-order outside the FFN)
    scales: np.ndarray | None = None  # (N, K/G) float32 (fp16 values)
    mins: np.ndarray | None = None  # (N, K/G) float32 (-z * s, rounded to fp16 by the packer)
    perm: np.ndarray | None = None  # input columns were reordered by this (act-order down_proj)
    rounded_mins: int = 0  # groups whose -z*s is not an fp16 number
    rounded_scales: int = 0  # BitNet: layers whose per-tensor scale is not an fp16 number
    asym: bool = True  # edgelut's form: w = scale * code + min (GPTQ/AWQ), or scale * t (ternary)
    notes: list[str] = field(default_factory=list)


def _edgelut_group(gp: np.ndarray) -> int | None:
    """The widest edgelut group in which every block of columns has one checkpoint group, or None."""
    k = gp.shape[0]
    for g in EDGELUT_GROUPS:
        padded = np.concatenate([gp, np.full(-k % g, gp[-1], dtype=gp.dtype)])
        blocks = padded.reshape(-1, g)
        if np.all(blocks == blocks[:, :1]):
            return g
    return None


def exact_layer(
    q: np.ndarray, z: np.ndarray, s: np.ndarray, g_idx: np.ndarray, bits: int, *, may_permute: bool
) -> LayerCodes:
    """Codes q (N, K), zeros z (groups, N), fp16 scales s (groups, N), g_idx (K,) -> LayerCodes."""
    s32 = np.asarray(s, dtype=np.float16).astype(np.float32)
    zg, sg = z[g_idx].T, s32[g_idx].T  # (N, K): each column's zero and scale
    weight = ((q - zg).astype(np.float32) * sg).astype(np.float32)
    out = LayerCodes(weight=np.ascontiguousarray(weight), qtype=PACKED_BITS.get(bits))
    if out.qtype is None:
        out.notes.append(f"{bits}-bit: no packed type, re-quantised by the recipe")
        return out
    perm = None
    if np.any(np.diff(g_idx) < 0):
        if not may_permute:
            out.notes.append("act-order g_idx on a layer whose input cannot be permuted: re-quantised")
            out.group_size = _fallback_group(g_idx)
            return out
        perm = np.argsort(g_idx, kind="stable")
    gp = g_idx if perm is None else g_idx[perm]
    group = _edgelut_group(gp)
    if group is None:
        out.notes.append("checkpoint groups do not align with 32-column blocks: re-quantised")
        out.group_size = _fallback_group(g_idx)
        return out
    k = q.shape[1]
    first = gp[np.arange(0, k, group)]  # the checkpoint group of each edgelut group
    scales = np.ascontiguousarray(s32[first].T)
    mins = np.ascontiguousarray(-(z[first].T.astype(np.float32) * scales))  # exact in float32
    codes = q if perm is None else q[:, perm]
    out.group_size, out.perm = group, perm
    out.codes = np.ascontiguousarray(codes.astype(np.int8))
    out.scales, out.mins = scales, mins
    out.rounded_mins = int(np.count_nonzero(mins.astype(np.float16).astype(np.float32) != mins))
    if perm is not None:
        out.weight = np.ascontiguousarray(weight[:, perm])
    return out


def _fallback_group(g_idx: np.ndarray) -> int:
    """The group a re-quantised layer gets: the checkpoint's size when edgelut has it, else 128."""
    counts = np.bincount(g_idx)
    size = int(counts.max()) if counts.size else 128
    return size if size in EDGELUT_GROUPS else 128


def _need(raw: dict[str, np.ndarray], name: str, path: Path) -> np.ndarray:
    if name not in raw:
        raise ValueError(f"{path}: missing tensor {name}")
    return raw[name]


def _int_tensor(raw: dict[str, np.ndarray], name: str, path: Path) -> np.ndarray:
    a = _need(raw, name, path)
    if a.dtype not in (np.int32, np.uint32) or a.ndim not in (1, 2):
        raise ValueError(f"{path}: {name} must be a 1-D/2-D int32 tensor, got {a.dtype} {tuple(a.shape)}")
    return a


def _scales(raw: dict[str, np.ndarray], name: str, groups: int, n: int, path: Path) -> np.ndarray:
    s = _need(raw, name, path)
    if s.shape != (groups, n):
        raise ValueError(f"{path}: {name} has shape {tuple(s.shape)}, expected ({groups}, {n})")
    if not np.issubdtype(s.dtype, np.floating):
        raise ValueError(f"{path}: {name} must be float, got {s.dtype}")
    return np.asarray(s, dtype=np.float16)


def _gptq_layer(raw: dict[str, np.ndarray], prefix: str, fmt: QuantFormat, path: Path) -> LayerCodes:
    bits = fmt.bits
    qweight = _int_tensor(raw, prefix + "qweight", path)
    if qweight.ndim != 2 or (qweight.shape[0] * 32) % bits:
        raise ValueError(f"{path}: {prefix}qweight has shape {tuple(qweight.shape)}, not (K*{bits}/32, N)")
    k, n = qweight.shape[0] * 32 // bits, qweight.shape[1]
    g_name = prefix + "g_idx"
    if g_name in raw:
        g_idx = np.asarray(raw[g_name]).astype(np.int64).reshape(-1)
        if g_idx.shape[0] != k:
            raise ValueError(f"{path}: {g_name} has {g_idx.shape[0]} entries, qweight has {k} input columns")
    else:
        size = k if fmt.group_size <= 0 else fmt.group_size
        g_idx = np.arange(k, dtype=np.int64) // size
    groups = int(_need(raw, prefix + "scales", path).shape[0])
    if g_idx.size and (g_idx.min() < 0 or g_idx.max() >= groups):
        raise ValueError(f"{path}: {g_name} refers to groups outside 0..{groups - 1}")
    s = _scales(raw, prefix + "scales", groups, n, path)
    qzeros = _int_tensor(raw, prefix + "qzeros", path)
    words = -(-n * bits // 32)
    if qzeros.shape != (groups, words):
        got = tuple(qzeros.shape)
        raise ValueError(f"{path}: {prefix}qzeros has shape {got}, expected ({groups}, {words})")
    q = unpack_bitstream(qweight.T, bits, k)  # (N, K): the stream runs down each column
    z = unpack_bitstream(qzeros, bits, n)  # (groups, N)
    if fmt.v1_zeros:
        z = (z + 1) & ((1 << bits) - 1)
    return exact_layer(q, z, s, g_idx, bits, may_permute=prefix.endswith("down_proj."))


def _awq_layer(raw: dict[str, np.ndarray], prefix: str, fmt: QuantFormat, path: Path) -> LayerCodes:
    qweight = _int_tensor(raw, prefix + "qweight", path)
    if qweight.ndim != 2:
        raise ValueError(f"{path}: {prefix}qweight must be 2-D (K, N/8), got {tuple(qweight.shape)}")
    k, n = qweight.shape[0], qweight.shape[1] * 8
    size = k if fmt.group_size <= 0 else fmt.group_size
    groups = -(-k // size)
    s = _scales(raw, prefix + "scales", groups, n, path)
    if fmt.zero_point:
        qzeros = _int_tensor(raw, prefix + "qzeros", path)
        if qzeros.shape != (groups, n // 8):
            raise ValueError(
                f"{path}: {prefix}qzeros has shape {tuple(qzeros.shape)}, expected ({groups}, {n // 8})"
            )
        z = unpack_awq(qzeros)
    else:
        z = np.full((groups, n), 1 << (fmt.bits - 1), dtype=np.int32)
    q = np.ascontiguousarray(unpack_awq(qweight).T)  # (N, K)
    g_idx = np.arange(k, dtype=np.int64) // size
    return exact_layer(q, z, s, g_idx, fmt.bits, may_permute=False)


def _bitnet_layer(raw: dict[str, np.ndarray], prefix: str, fmt: QuantFormat, path: Path) -> LayerCodes:
    """transformers' BitNet layout: uint8 (N/4, K), bits 2j..2j+1 of row i hold t+1 of row j*N/4 + i."""
    packed = _need(raw, prefix + "weight", path)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise ValueError(
            f"{path}: {prefix}weight must be uint8 (N/4, K), got {packed.dtype} {tuple(packed.shape)}"
        )
    ws = np.asarray(_need(raw, prefix + "weight_scale", path), dtype=np.float32).reshape(-1)
    if ws.size != 1 or not np.isfinite(ws[0]) or ws[0] == 0:
        raise ValueError(f"{path}: {prefix}weight_scale must be one finite non-zero number")
    codes = np.concatenate([(packed >> np.uint8(2 * j)) & 3 for j in range(4)], axis=0).astype(np.int8) - 1
    if codes.max(initial=-1) > 1:
        raise ValueError(f"{path}: {prefix}weight holds the 2-bit value 3, which is no ternary code")
    scale = np.float32(1.0) / ws[0] if fmt.linear_class == "bitlinear" else ws[0]
    n, k = codes.shape
    groups = -(-k // TERNARY_GROUP)
    out = LayerCodes(
        weight=codes.astype(np.float32) * scale, qtype="tq", group_size=TERNARY_GROUP, asym=False
    )
    out.codes = np.ascontiguousarray(codes)
    out.scales = np.full((n, groups), scale, dtype=np.float32)
    out.rounded_scales = int(np.float32(np.float16(scale)) != scale)
    return out


def dequantize_checkpoint(
    raw: dict[str, np.ndarray], fmt: QuantFormat, path: Path
) -> tuple[dict[str, np.ndarray], dict[str, LayerCodes]]:
    """HF tensors with packed layers -> (tensors with float ``*.weight``, HF weight name -> LayerCodes)."""
    if fmt.method == "bitnet":
        prefixes = sorted({name[: -len("weight_scale")] for name in raw if name.endswith(".weight_scale")})
        out = {k: v for k, v in raw.items() if not k.endswith(".weight_scale")}
        layers = {p + "weight": _bitnet_layer(raw, p, fmt, path) for p in prefixes}
        if not layers:
            raise ValueError(f"{path}: quantization_config says bitnet but no tensor has a weight_scale")
        out |= {name: layer.weight for name, layer in layers.items()}
        return out, layers
    prefixes = sorted({name[: -len("qweight")] for name in raw if name.endswith(".qweight")})
    if not prefixes:
        raise ValueError(f"{path}: quantization_config says {fmt.method} but no tensor is a *.qweight")
    out = {
        k: v
        for k, v in raw.items()
        if not any(k == p + s for p in prefixes for s in ("qweight", "qzeros", "scales", "g_idx"))
    }
    layers: dict[str, LayerCodes] = {}
    read = _gptq_layer if fmt.method == "gptq" else _awq_layer
    for p in prefixes:
        if p + "weight" in raw:
            raise ValueError(f"{path}: {p}weight and {p}qweight are both present")
        layer = read(raw, p, fmt, path)
        out[p + "weight"] = layer.weight
        layers[p + "weight"] = layer
    return out, layers


def attach_codes(model: Any, layers: dict[str | None, LayerCodes], fmt: QuantFormat) -> None:
    """Codes onto an ImportedModel (GGUF names), with act-order permutations applied and the import recorded.

    ``model.tensors`` already holds each layer's float weights (Phi-3's fused
    layers already split); its codes are split the same way here.
    """
    from edgelut.models.importers.huggingface import split_fused, split_specs

    layers = {k: v for k, v in layers.items() if k is not None}
    codes = {k: (v.codes, v.scales, v.mins) for k, v in layers.items() if v.codes is not None}
    specs = {k: (v.qtype, v.group_size, v.asym) for k, v in layers.items() if v.qtype is not None}
    if model.config.traits.fused_qkv:
        split_fused(codes, model.config)
        split_specs(specs)
    for name, layer in layers.items():
        if layer.perm is None:
            continue
        # down_proj's columns were sorted by group: its input (gate * up) gets the same order.
        for other in ("ffn_gate.weight", "ffn_up.weight"):
            target = name.replace("ffn_down.weight", other)
            model.tensors[target] = np.ascontiguousarray(model.tensors[target][layer.perm])
            if target in codes:
                c, s, m = codes[target]
                codes[target] = (c[layer.perm], s[layer.perm], m[layer.perm])
    model.source_codes = codes
    model.source_specs = specs
    exact = sorted(codes)
    model.import_info = fmt.describe() | {
        "layers": len(layers),
        "exact_layers": len(exact),
        "permuted_layers": sum(v.perm is not None for v in layers.values()),
        "requantised": sorted(set(layers) - set(codes)),
        "rounded_mins": sum(v.rounded_mins for v in layers.values()),
        "rounded_scales": sum(v.rounded_scales for v in layers.values()),
        "groups": sum(0 if v.scales is None else int(v.scales.size) for v in layers.values()),
        "edgelut_groups": sorted({v.group_size for v in layers.values() if v.codes is not None}),
    }
