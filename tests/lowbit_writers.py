"""Writers of trained-low-bit checkpoints in their published layouts (GPTQ, AWQ), for the importer tests.

Written from the formats' descriptions (AutoGPTQ/GPTQModel: ``qweight`` int32
packed down the input dimension as one little-endian bit stream per output
column, ``qzeros`` packed the same way along the outputs, v1 storing zero - 1;
AutoAWQ GEMM: 4-bit values packed along the outputs, logical column
``AWQ_ORDER[i]`` of each 8 in nibble i). The quantiser here is plain
round-to-nearest with integer zero points, which is the form GPTQ/AWQ
checkpoints take; what matters to the importer is the layout, not how the
codes were chosen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from model_fixtures import hf_config_json, write_tokenizer_files

from edgelut.models.config import LINEAR_TENSORS, ModelConfig
from edgelut.models.importers.huggingface import gguf_to_hf_name
from edgelut.models.importers.lowbit import AWQ_ORDER


@dataclass
class QuantLayer:
    q: np.ndarray  # (N, K) codes
    z: np.ndarray  # (groups, N) zero points
    s: np.ndarray  # (groups, N) fp16 scales
    g_idx: np.ndarray  # (K,) group of each input column

    def dequantize(self) -> np.ndarray:
        """The numpy dequantisation every test compares against: s * (q - z), float32."""
        s = self.s.astype(np.float32)
        return ((self.q - self.z[self.g_idx].T).astype(np.float32) * s[self.g_idx].T).astype(np.float32)


def quantize_layer(
    w: np.ndarray, bits: int, group: int, *, sym: bool, act_order: bool = False, seed: int = 0
) -> QuantLayer:
    """RTN with integer zero points per group of input columns (act-order: groups over a random order)."""
    n, k = w.shape
    size = k if group <= 0 else group
    maxq = (1 << bits) - 1
    order = np.random.default_rng(seed).permutation(k) if act_order else np.arange(k)
    g_idx = np.empty(k, dtype=np.int64)
    g_idx[order] = np.arange(k) // size
    groups = -(-k // size)
    s = np.zeros((groups, n), dtype=np.float16)
    z = np.zeros((groups, n), dtype=np.int64)
    for g in range(groups):
        cols = w[:, g_idx == g]
        lo, hi = np.minimum(cols.min(axis=1), 0), np.maximum(cols.max(axis=1), 0)
        if sym:
            scale = 2 * np.maximum(np.abs(lo), hi) / maxq
            zero = np.full(n, 1 << (bits - 1))
        else:
            scale = (hi - lo) / maxq
            zero = np.clip(np.rint(-lo / np.where(scale > 0, scale, 1)), 0, maxq)
        s[g] = np.where(scale > 0, scale, 1e-3).astype(np.float16)
        z[g] = zero
    sf = s.astype(np.float32)
    q = np.clip(np.rint(w / sf[g_idx].T) + z[g_idx].T, 0, maxq).astype(np.int64)
    return QuantLayer(q, z, s, g_idx)


def pack_bitstream(values: np.ndarray, bits: int) -> np.ndarray:
    """(rows, count) values -> (rows, count*bits/32) int32: one little-endian stream per row."""
    rows, count = values.shape
    stream = ((values[..., None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(rows, count * bits)
    stream = np.concatenate([stream, np.zeros((rows, -stream.shape[1] % 32), np.uint8)], axis=1)
    return np.packbits(stream, axis=1, bitorder="little").view("<i4").reshape(rows, -1)


def gptq_tensors(layer: QuantLayer, bits: int, *, v1: bool, with_g_idx: bool = True) -> dict[str, np.ndarray]:
    zeros = (layer.z - 1) & ((1 << bits) - 1) if v1 else layer.z
    out = {
        "qweight": np.ascontiguousarray(pack_bitstream(layer.q, bits).T),
        "qzeros": pack_bitstream(zeros, bits),
        "scales": layer.s,
    }
    if with_g_idx:
        out["g_idx"] = layer.g_idx.astype(np.int32)
    return out


def pack_awq(values: np.ndarray) -> np.ndarray:
    """(rows, C) 4-bit values -> (rows, C/8) int32 in AWQ's GEMM nibble order."""
    rows, c = values.shape
    v = values.reshape(rows, c // 8, 8)[..., list(AWQ_ORDER)].astype(np.uint32)
    words = np.zeros((rows, c // 8), dtype=np.uint32)
    for i in range(8):
        words |= v[..., i] << np.uint32(4 * i)
    return words.view(np.int32)


def awq_tensors(layer: QuantLayer) -> dict[str, np.ndarray]:
    return {
        "qweight": pack_awq(np.ascontiguousarray(layer.q.T)),
        "qzeros": pack_awq(layer.z),
        "scales": layer.s,
    }


@dataclass
class Checkpoint:
    path: Path
    dequantized: dict[str, np.ndarray]  # GGUF name -> the float model the checkpoint means
    layers: dict[str, QuantLayer]


def write_quantized_hf_dir(
    directory: Path,
    config: ModelConfig,
    tensors: dict[str, np.ndarray],
    *,
    method: str = "gptq",
    bits: int = 4,
    group: int = 32,
    sym: bool = False,
    act_order: bool = False,
    v1: bool = True,
    quantize_config_file: bool = False,
    tokenizer_json: str | None = None,
) -> Checkpoint:
    """A Hugging Face checkpoint whose linear layers are GPTQ or AWQ packed; the rest float."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    arch = config.architecture
    hf: dict[str, np.ndarray] = {}
    deq = dict(tensors)
    layers = {}
    for name, w in tensors.items():
        hf_name = gguf_to_hf_name(name, arch)
        if name.split(".", 2)[-1] not in LINEAR_TENSORS:
            hf[hf_name] = w
            continue
        seed = sum(map(ord, name))
        layer = quantize_layer(w, bits, group, sym=sym, act_order=act_order and method == "gptq", seed=seed)
        layers[name] = layer
        deq[name] = layer.dequantize()
        packed = gptq_tensors(layer, bits, v1=v1) if method == "gptq" else awq_tensors(layer)
        prefix = hf_name.removesuffix("weight")
        hf |= {prefix + k: v for k, v in packed.items()}
    cfg = hf_config_json(config)
    if method == "gptq":
        qc = {
            "quant_method": "gptq",
            "bits": bits,
            "group_size": group,
            "desc_act": act_order,
            "sym": sym,
            "checkpoint_format": "gptq" if v1 else "gptq_v2",
        }
    else:
        qc = {"quant_method": "awq", "bits": bits, "group_size": group, "zero_point": True, "version": "gemm"}
    if quantize_config_file:
        (directory / "quantize_config.json").write_text(json.dumps(qc), encoding="utf-8")
    else:
        cfg["quantization_config"] = qc
    (directory / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    save_file(hf, str(directory / "model.safetensors"))
    write_tokenizer_files(directory, tokenizer_json)
    return Checkpoint(directory, deq, layers)


def pack_bitnet(t: np.ndarray) -> np.ndarray:
    """Ternary (N, K) -> transformers' uint8 (N/4, K): bits 2j..2j+1 of row i hold t+1 of row j*N/4 + i."""
    n = t.shape[0]
    quarter = (t + 1).astype(np.uint8).reshape(4, n // 4, -1)
    return quarter[0] | (quarter[1] << 2) | (quarter[2] << 4) | (quarter[3] << 6)


def write_bitnet_hf_dir(
    directory: Path,
    config: ModelConfig,
    tensors: dict[str, np.ndarray],
    codes: dict[str, np.ndarray],
    weight_scale: float,
    *,
    linear_class: str = "bitlinear",
) -> Path:
    """A BitNet b1.58 checkpoint as transformers stores it: packed ternary weights, a weight_scale each."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    hf: dict[str, np.ndarray] = {}
    for name, w in tensors.items():
        hf_name = gguf_to_hf_name(name, config.architecture)
        if name in codes:
            hf[hf_name] = pack_bitnet(codes[name])
            hf[hf_name.removesuffix("weight") + "weight_scale"] = np.array([weight_scale], dtype=np.float32)
        else:
            hf[hf_name] = w
    cfg = hf_config_json(config) | {
        "hidden_act": config.ffn_act,
        "quantization_config": {
            "quant_method": "bitnet",
            "linear_class": linear_class,
            "quantization_mode": "offline",
        },
    }
    (directory / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    save_file(hf, str(directory / "model.safetensors"))
    write_tokenizer_files(directory)
    return directory
