"""Calibration: the inputs of every linear layer, for GPTQ and output-weighted RTN.

The model is run layer by layer in numpy on a few calibration sequences. At
each linear layer the runner computes the Hessian H = 2 X^T X / tokens of its
input X and hands (name, float weight, H) to a callback, which quantises the
weight and returns the weight to continue with (the dequantised one), so later
layers are calibrated on the outputs of the quantised earlier ones (sequential
GPTQ). Q, K and V share one input, as do gate and up.

NOTE for the lead: this carries its own small llama forward (rmsnorm, RoPE,
GQA attention, SwiGLU) because models/reference.py had not landed when it was
written; fold it onto the reference's building blocks later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from edgelut.models.config import ImportedModel, ModelConfig
from edgelut.quantize.gptq import hessian

__all__ = ["DEFAULT_CALIBRATION_TEXT", "QuantizeFn", "calibration_ids", "run_calibrated"]

# Quantises (full tensor name, float weight, Hessian or None) -> weight to propagate.
QuantizeFn = Callable[[str, np.ndarray, np.ndarray | None], np.ndarray]

DEFAULT_CALIBRATION_TEXT = """\
The river runs through the middle of the old town, and on summer evenings people walk along its banks \
until the light fades. Most of the houses were built of stone more than two hundred years ago, when the \
town was a busy market for wool and grain.
Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make sugar, \
releasing oxygen as a by-product. It takes place mainly in the leaves, inside small structures called \
chloroplasts.
To make a simple loaf of bread, mix flour, water, salt and yeast, knead the dough for ten minutes, and \
let it rise in a warm place until it has doubled in size. Then shape it, let it rise again, and bake it \
in a hot oven.
In 1969 two astronauts walked on the Moon while a third orbited above them. The mission was watched on \
television by hundreds of millions of people around the world.
def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
User: Can you explain what a prime number is?
Assistant: A prime number is a whole number greater than one that can only be divided evenly by one and \
by itself. The first few primes are 2, 3, 5, 7, 11 and 13.
The committee will meet again next Tuesday to discuss the budget, the new library and the plan to repair \
the roads before winter. Anyone who wishes to speak should write to the secretary in advance.
"""


def calibration_ids(
    tokenizer_json: str, text: str = DEFAULT_CALIBRATION_TEXT, *, seq_len: int = 128, n_seqs: int = 8
) -> np.ndarray:
    """Token ids (n, seq_len) cut from text (repeated if short) with the model's own tokenizer."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(tokenizer_json)
    except Exception as e:  # tokenizers raises its own exception type
        raise ValueError(f"cannot build the model's tokenizer for calibration: {e}") from e
    ids = tok.encode(text).ids
    if not ids:
        raise ValueError("calibration text produced no tokens")
    total = seq_len * n_seqs
    reps = -(-total // len(ids))
    ids = (ids * reps)[:total]
    n = max(1, min(n_seqs, len(ids) // seq_len))
    return np.asarray(ids[: n * seq_len], dtype=np.int64).reshape(n, seq_len)


def _rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return (x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w).astype(np.float32)


def _rope(x: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """x (S, T, H, D) rotated by position; NeoX (halves) or adjacent-pair layout."""
    t, d = x.shape[1], x.shape[3]
    pos = np.arange(t, dtype=np.float64)
    if cfg.rope_scaling and cfg.rope_scaling.get("type") == "linear":
        pos = pos / float(cfg.rope_scaling.get("factor", 1.0))
    inv = cfg.rope_theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None] * inv[None, :]  # (T, D/2)
    cos = np.cos(ang)[None, :, None, :].astype(np.float32)
    sin = np.sin(ang)[None, :, None, :].astype(np.float32)
    if cfg.rope_style == "neox":
        a, b = x[..., : d // 2], x[..., d // 2 :]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Causal GQA attention: q (S, T, H, D), k/v (S, T, KV, D) -> (S, T, H*D)."""
    s, t, h, d = q.shape
    rep = cfg.n_heads // cfg.n_kv_heads
    k = np.repeat(k, rep, axis=2)
    v = np.repeat(v, rep, axis=2)
    scores = np.einsum("sthd,suhd->shtu", q, k) / np.sqrt(d)
    scores = scores + np.triu(np.full((t, t), -np.inf, dtype=np.float32), 1)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    scores /= scores.sum(axis=-1, keepdims=True)
    return np.einsum("shtu,suhd->sthd", scores, v).reshape(s, t, h * d).astype(np.float32)


def _layers(model: ImportedModel, ids: np.ndarray, quantize: QuantizeFn) -> Iterator[int]:
    cfg, t = model.config, model.tensors
    h = t["token_embd.weight"][ids].astype(np.float32)  # (S, T, hidden)
    s, n = ids.shape
    hd = cfg.head_dim
    for i in range(cfg.n_layers):
        p = f"blk.{i}."

        def lin(x: np.ndarray, name: str, wq: np.ndarray, p: str = p) -> np.ndarray:
            y = x @ wq.T
            bias = t.get(p + name.replace(".weight", ".bias"))
            return y + bias if bias is not None else y

        # Attention: Q, K, V share the normed input.
        x = _rmsnorm(h, t[p + "attn_norm.weight"], cfg.rms_norm_eps)
        hx = hessian(x)
        wq = {m: quantize(p + m, t[p + m], hx) for m in ("attn_q.weight", "attn_k.weight", "attn_v.weight")}
        q = lin(x, "attn_q.weight", wq["attn_q.weight"]).reshape(s, n, cfg.n_heads, hd)
        k = lin(x, "attn_k.weight", wq["attn_k.weight"]).reshape(s, n, cfg.n_kv_heads, hd)
        v = lin(x, "attn_v.weight", wq["attn_v.weight"]).reshape(s, n, cfg.n_kv_heads, hd)
        a = _attention(_rope(q, cfg), _rope(k, cfg), v, cfg)
        wo = quantize(p + "attn_output.weight", t[p + "attn_output.weight"], hessian(a))
        h = h + a @ wo.T
        # SwiGLU FFN: gate and up share the normed input.
        x = _rmsnorm(h, t[p + "ffn_norm.weight"], cfg.rms_norm_eps)
        hx = hessian(x)
        wg = quantize(p + "ffn_gate.weight", t[p + "ffn_gate.weight"], hx)
        wu = quantize(p + "ffn_up.weight", t[p + "ffn_up.weight"], hx)
        g = x @ wg.T
        act = (g / (1.0 + np.exp(-g)) * (x @ wu.T)).astype(np.float32)
        wd = quantize(p + "ffn_down.weight", t[p + "ffn_down.weight"], hessian(act))
        h = (h + act @ wd.T).astype(np.float32)
        yield i
    if "output.weight" in t:
        x = _rmsnorm(h, t["output_norm.weight"], cfg.rms_norm_eps)
        quantize("output.weight", t["output.weight"], hessian(x))


def run_calibrated(model: ImportedModel, ids: np.ndarray, quantize: QuantizeFn) -> Iterator[int]:
    """Runs the model on ids (S, T), calling quantize for every linear weight with its Hessian.

    Yields each layer index once the layer is done (for progress bars); the
    untied ``output.weight`` is handled after the last layer.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 2:
        raise ValueError(f"calibration ids must be (sequences, tokens), got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= model.config.vocab_size):
        raise ValueError("calibration ids fall outside the vocabulary")
    return _layers(model, ids, quantize)
