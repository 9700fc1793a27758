"""An independent numpy forward pass for the llama family, Qwen2/3 and Gemma 3: the oracle.

It reads the importer's float weights (GGUF names, HF orientation) and runs a
whole sequence at once with a causal mask; nothing here is shared with the C++
engine, so agreement between the two means something. ``model`` is anything
with ``.config`` (ModelConfig) and ``.tensors`` (a mapping name -> array), so a
loader that dequantises edgelut model files on access plugs in unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edgelut.models.config import ModelConfig


class WeightSource(Protocol):
    config: ModelConfig
    tensors: Mapping[str, np.ndarray]


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    # x: (T, hidden); normalise each row by its root mean square, then scale.
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope_angles(
    positions: np.ndarray, config: ModelConfig, dtype: Any, layer: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables (T, head_dim/2) for the given positions (of ``layer``: sliding layers differ)."""
    d = config.rotary_dim
    local = layer is not None and config.is_sliding(layer)
    theta = config.layer_rope_theta(layer) if layer is not None else config.rope_theta
    inv_freq = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    pos = positions.astype(np.float64)
    scaling = None if local else config.rope_scaling  # sliding-window layers run unscaled (Gemma 3)
    if scaling:
        kind = scaling.get("type", scaling.get("rope_type"))
        if kind == "linear":
            pos = pos / float(scaling["factor"])
        elif kind == "freq_factors":  # Llama 3 style: each frequency divided by its own factor
            inv_freq = inv_freq / np.asarray(scaling["factors"], dtype=np.float64)
        elif kind == "longrope":
            # Phi-3 (HF's Phi3LongRoPEScaledRotaryEmbedding): the short factors while the
            # sequence fits the original context, the long ones for all of it once it does not.
            beyond = positions.size > 0 and int(positions.max()) + 1 > int(scaling["original_context"])
            factors = scaling["long_factors" if beyond else "factors"]
            inv_freq = inv_freq / np.asarray(factors, dtype=np.float64)
        else:
            raise ValueError(f"rope scaling {kind!r} is not supported (linear, freq_factors, longrope)")
    angles = np.outer(pos, inv_freq)
    m = 1.0 if local else config.rope_mscale
    return (m * np.cos(angles)).astype(dtype), (m * np.sin(angles)).astype(dtype)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, style: str) -> np.ndarray:
    """Rotate x: (heads, T, head_dim). NeoX pairs (i, i + d/2); adjacent pairs (2i, 2i + 1).

    With cos/sin narrower than head_dim / 2 only the leading 2 * cos.shape[-1]
    dims rotate (partial RoPE); the rest pass through.
    """
    rd = 2 * cos.shape[-1]
    if rd < x.shape[-1]:
        return np.concatenate([apply_rope(x[..., :rd], cos, sin, style), x[..., rd:]], axis=-1)
    if style == "neox":
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = b * cos + a * sin
    return out


def _linear(x: np.ndarray, tensors: Mapping[str, np.ndarray], name: str, dtype: Any) -> np.ndarray:
    # Weights are (N = out, K = in): y = x W^T (+ b).
    y = x @ np.asarray(tensors[f"{name}.weight"], dtype=dtype).T
    bias = tensors.get(f"{name}.bias")
    if bias is not None:
        y = y + np.asarray(bias, dtype=dtype)
    return y


def block_hadamard(x: np.ndarray, block: int) -> np.ndarray:
    """x (..., F) times the block-diagonal normalised Sylvester Hadamard matrix (blocks of ``block``).

    The online half of the incoherence rotation (quantize/rotate.py): the FFN
    activation is transformed before ffn_down, whose weights hold the inverse.
    """
    f = x.shape[-1]
    y = np.array(x, copy=True).reshape(*x.shape[:-1], f // block, block)
    h = 1
    while h < block:  # fast Walsh-Hadamard butterflies, as the engine runs them
        y = y.reshape(*y.shape[:-1], block // (2 * h), 2, h)
        a, b = y[..., 0, :].copy(), y[..., 1, :].copy()
        y[..., 0, :], y[..., 1, :] = a + b, a - b
        y = y.reshape(*y.shape[:-3], block)
        h *= 2
    return (y * y.dtype.type(1.0 / np.sqrt(block))).reshape(x.shape)


def act_int8(x: np.ndarray) -> np.ndarray:
    """BitNet's activation quantisation, per row: round(x * 127 / max|x|), clipped to int8, scaled back."""
    amax = np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-5)
    scale = 127.0 / amax
    return np.clip(np.rint(x * scale), -128, 127) / scale


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x * x * x)))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def forward(
    model: WeightSource, ids: Sequence[int] | np.ndarray, dtype: Any = np.float32, logits_from: int = 0
) -> np.ndarray:
    """Logits (T - logits_from, vocab) for positions logits_from..T-1 of one sequence.

    ``logits_from`` only skips the output projection of earlier positions (the
    costliest matmul for small models); every position still runs every layer.
    """
    cfg = model.config
    w = model.tensors
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"ids must be a non-empty 1-D sequence, got shape {ids.shape}")
    if ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise ValueError(f"token id out of range [0, {cfg.vocab_size})")
    t, h, hk, d = ids.size, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    eps = cfg.rms_norm_eps

    def norm(y: np.ndarray, name: str) -> np.ndarray:
        return rms_norm(y, np.asarray(w[name], dtype=dtype), eps)

    def linear_in(y: np.ndarray) -> np.ndarray:
        # BitNet quantises every linear layer's input per token (lm_head excepted).
        return act_int8(y).astype(dtype) if cfg.act_int8 else y

    # Causal mask: position i attends to j <= i; a sliding-window layer only to i - j < window.
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    mask = np.where(j > i, -np.inf, 0.0).astype(dtype)
    window_mask = np.where((j > i) | (i - j >= max(cfg.sliding_window, 1)), -np.inf, 0.0).astype(dtype)
    x = np.asarray(w["token_embd.weight"], dtype=dtype)[ids]  # (T, hidden)
    if cfg.embed_scale != 1.0:
        x = x * dtype(cfg.embed_scale)

    for layer in range(cfg.n_layers):
        p = f"blk.{layer}"
        cos, sin = rope_angles(np.arange(t), cfg, dtype, layer)  # (T, d/2)
        # Attention block: RMSNorm, q/k/v projections, per-head q/k norms, RoPE, GQA, output projection.
        xn = linear_in(norm(x, f"{p}.attn_norm.weight"))
        q = _linear(xn, w, f"{p}.attn_q", dtype).reshape(t, h, d).transpose(1, 0, 2)  # (H, T, d)
        k = _linear(xn, w, f"{p}.attn_k", dtype).reshape(t, hk, d).transpose(1, 0, 2)  # (Hkv, T, d)
        v = _linear(xn, w, f"{p}.attn_v", dtype).reshape(t, hk, d).transpose(1, 0, 2)  # (Hkv, T, d)
        if cfg.qk_norm:
            q = norm(q, f"{p}.attn_q_norm.weight")
            k = norm(k, f"{p}.attn_k_norm.weight")
        q = apply_rope(q, cos, sin, cfg.rope_style)
        k = apply_rope(k, cos, sin, cfg.rope_style)
        # Query head i reads kv head i // (H / Hkv).
        k = np.repeat(k, h // hk, axis=0)
        v = np.repeat(v, h // hk, axis=0)
        layer_mask = window_mask if cfg.is_sliding(layer) else mask
        scores = q @ k.transpose(0, 2, 1) * dtype(cfg.query_scale) + layer_mask  # (H, T, T)
        attn = softmax(scores) @ v  # (H, T, d)
        attn = attn.transpose(1, 0, 2).reshape(t, h * d)
        if cfg.sub_norms:
            attn = norm(attn, f"{p}.attn_sub_norm.weight")
        out = _linear(linear_in(attn), w, f"{p}.attn_output", dtype)
        if cfg.post_norms:
            out = norm(out, f"{p}.post_attention_norm.weight")
        x = x + out

        # Feed-forward block: RMSNorm, SwiGLU or GeGLU.
        xn = linear_in(norm(x, f"{p}.ffn_norm.weight"))
        gate = _linear(xn, w, f"{p}.ffn_gate", dtype)
        up = _linear(xn, w, f"{p}.ffn_up", dtype)
        if cfg.ffn_act == "gelu_tanh":
            gated = gelu_tanh(gate)
        elif cfg.ffn_act == "relu2":  # squared ReLU (BitNet b1.58 2B-4T)
            gated = np.square(np.maximum(gate, 0))
        else:  # silu
            gated = gate / (1.0 + np.exp(-gate))
        act = gated * up
        if cfg.sub_norms:
            act = norm(act, f"{p}.ffn_sub_norm.weight")
        if cfg.ffn_hadamard:
            act = block_hadamard(act, cfg.ffn_hadamard)
        out = _linear(linear_in(act), w, f"{p}.ffn_down", dtype)
        if cfg.post_norms:
            out = norm(out, f"{p}.post_ffw_norm.weight")
        x = x + out

    x = rms_norm(x[logits_from:], np.asarray(w["output_norm.weight"], dtype=dtype), eps)
    head = w.get("output.weight")
    if head is None:  # tied embeddings
        head = w["token_embd.weight"]
    return x @ np.asarray(head, dtype=dtype).T  # (T - logits_from, vocab)


def greedy_generate(
    model: WeightSource, ids: Sequence[int], n_tokens: int, stop: Sequence[int] = (), dtype: Any = np.float32
) -> list[int]:
    """Greedy continuation by repeated full forwards (slow; for tests on small models)."""
    seq = list(ids)
    out: list[int] = []
    for _ in range(n_tokens):
        nxt = int(np.argmax(forward(model, seq, dtype, logits_from=len(seq) - 1)[-1]))
        out.append(nxt)
        if nxt in stop:
            break
        seq.append(nxt)
    return out


@dataclass
class PerplexityResult:
    perplexity: float
    nll: np.ndarray  # negative log-likelihood of every scored token, in order
    chunks: int
    ctx: int

    @property
    def mean_nll(self) -> float:
        return float(np.mean(self.nll))


def perplexity(
    model: WeightSource,
    ids: Sequence[int] | np.ndarray,
    ctx: int = 512,
    n_chunks: int | None = None,
    stride: int | None = None,
    first: int | None = None,
    bos_id: int | None = None,
    dtype: Any = np.float32,
) -> PerplexityResult:
    """Perplexity the way llama.cpp's llama-perplexity measures it, by default.

    Windows of ``ctx`` tokens start every ``stride`` (default ctx: disjoint
    chunks); within a window only predictions of positions ``first+1 .. ctx-1``
    are scored (default first = ctx/2, so every scored token has at least
    ctx/2 tokens of context). With ``bos_id`` the first token of each window is
    replaced by BOS, as llama.cpp does for models that add BOS.
    """
    ids = np.asarray(ids, dtype=np.int64)
    stride = ctx if stride is None else stride
    first = ctx // 2 if first is None else first
    if not 0 <= first < ctx - 1:
        raise ValueError(f"first ({first}) must be in [0, ctx-1) with ctx={ctx}")
    available = (ids.size - ctx) // stride + 1 if ids.size >= ctx else 0
    if available < 1:
        raise ValueError(f"need at least ctx={ctx} tokens, got {ids.size}")
    chunks = available if n_chunks is None else min(n_chunks, available)
    nll: list[np.ndarray] = []
    for c in range(chunks):
        window = ids[c * stride : c * stride + ctx].copy()
        if bos_id is not None:
            window[0] = bos_id
        logits = forward(model, window, dtype, logits_from=first)[: ctx - 1 - first]
        logp = log_softmax(logits.astype(np.float64))
        targets = window[first + 1 : ctx]
        nll.append(-logp[np.arange(targets.size), targets])
    all_nll = np.concatenate(nll)
    return PerplexityResult(float(np.exp(np.mean(all_nll))), all_nll, chunks, ctx)


__all__ = [
    "PerplexityResult",
    "apply_rope",
    "block_hadamard",
    "forward",
    "gelu_tanh",
    "greedy_generate",
    "perplexity",
    "rms_norm",
]
