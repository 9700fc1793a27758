"""Calibration: the inputs of every linear layer, for GPTQ and output-weighted RTN.

The model is run layer by layer in numpy on a few calibration sequences. At
each linear layer the runner computes the Hessian H = 2 X^T X / tokens of its
input X and hands (name, float weight, H) to a callback, which quantises the
weight and returns the weight to continue with (the dequantised one), so later
layers are calibrated on the outputs of the quantised earlier ones (sequential
GPTQ). Q, K and V share one input, as do gate and up.

The building blocks (RMSNorm, RoPE, softmax) are the reference forward's
(models/reference.py); only the layer loop is here, because it has to stop at
every linear layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from edgelut.models.config import ImportedModel, ModelConfig
from edgelut.models.lazy import tensor_rows, tensor_shape
from edgelut.models.reference import apply_rope, block_hadamard, gelu_tanh, rms_norm, rope_angles, softmax
from edgelut.quantize.gptq import hessian

__all__ = [
    "DEFAULT_CALIBRATION_TEXT",
    "QuantizeFn",
    "calibration_ids",
    "default_calibration_text",
    "run_calibrated",
]

# Quantises (full tensor name, float weight, Hessian or None) -> weight to propagate.
# quantize(name, weight, statistics) -> the weight the later layers see. For the head
# (the last call) the weight is None and the result unused: a callback that needs it reads
# it from the model's tensors a block of rows at a time, since the float head of a large
# vocabulary is GBs (Qwen2.5-1.5B: 151,936 x 1,536 float32 = 0.9 GB, and GPTQ's float64 working
# copy twice that).
QuantizeFn = Callable[[str, np.ndarray | None, np.ndarray | None], np.ndarray | None]

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


def default_calibration_text() -> str:
    """The built-in sample plus CPython's pydoc_data.topics (~465k characters of English prose).

    The built-in sample alone is ~400 tokens: repeated up to the calibration
    length it gives Hessians (576..1536 wide) far from full rank, and GPTQ then
    fits the weights to that one paragraph. pydoc_data ships with every CPython
    (it backs ``help()``), so the set stays offline and needs no download. The
    topics are joined in sorted order so the text, and the quantised file, are
    reproducible.
    """
    parts = [DEFAULT_CALIBRATION_TEXT]
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a stripped-down Python; the sample alone still works
        return DEFAULT_CALIBRATION_TEXT
    parts += [topics[k] for k in sorted(topics)]
    return "\n".join(parts)


def calibration_ids(
    tokenizer_json: str, text: str | None = None, *, seq_len: int = 128, n_seqs: int = 8
) -> np.ndarray:
    """Token ids (n, seq_len) with the model's tokenizer; text defaults to default_calibration_text().

    The sequences are spread evenly over the whole token stream (not its
    first n * seq_len tokens), so a long text's variety reaches a short
    calibration budget; a text shorter than the budget is repeated.
    """
    from tokenizers import Tokenizer

    if text is None:
        text = default_calibration_text()
    try:
        tok = Tokenizer.from_str(tokenizer_json)
    except Exception as e:  # tokenizers raises its own exception type
        raise ValueError(f"cannot build the model's tokenizer for calibration: {e}") from e
    ids = tok.encode(text).ids
    if not ids:
        raise ValueError("calibration text produced no tokens")
    total = seq_len * n_seqs
    if len(ids) < total:
        reps = -(-total // len(ids))
        ids = (ids * reps)[:total]
    n = max(1, min(n_seqs, len(ids) // seq_len))
    windows = len(ids) // seq_len
    starts = np.linspace(0, windows - 1, n).round().astype(np.int64) * seq_len
    arr = np.asarray(ids, dtype=np.int64)
    return np.stack([arr[s : s + seq_len] for s in starts])


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, cfg: ModelConfig, layer: int) -> np.ndarray:
    """Causal GQA attention with RoPE: q (S, T, H, D), k/v (S, T, KV, D) -> (S, T, H*D)."""
    s, t, h, d = q.shape
    cos, sin = rope_angles(np.arange(t), cfg, np.float32, layer)
    q = apply_rope(q.transpose(0, 2, 1, 3), cos, sin, cfg.rope_style)  # (S, H, T, D)
    k = apply_rope(k.transpose(0, 2, 1, 3), cos, sin, cfg.rope_style)
    rep = cfg.n_heads // cfg.n_kv_heads
    k = np.repeat(k, rep, axis=1)
    v = np.repeat(v.transpose(0, 2, 1, 3), rep, axis=1)
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    hidden = (j > i) | ((i - j >= cfg.sliding_window) if cfg.is_sliding(layer) else False)
    mask = np.where(hidden, -np.inf, 0.0).astype(np.float32)
    scores = q @ k.transpose(0, 1, 3, 2) * np.float32(cfg.query_scale) + mask  # (S, H, T, T)
    out = softmax(scores) @ v  # (S, H, T, D)
    return out.transpose(0, 2, 1, 3).reshape(s, t, h * d).astype(np.float32)


def _embed(t: Mapping[str, Any], ids: np.ndarray) -> np.ndarray:
    """Embedding rows of ids (S, T) -> (S, T, hidden), reading the table a block of rows at a time
    (a lazy import never holds the whole float embedding: 0.9 GB for Qwen2.5-1.5B)."""
    name = "token_embd.weight"
    n, k = tensor_shape(t, name)
    step = max(64, (1 << 22) // max(k, 1))
    flat = ids.reshape(-1)
    out = np.empty((flat.size, k), dtype=np.float32)
    for a in range(0, n, step):
        b = min(n, a + step)
        sel = np.nonzero((flat >= a) & (flat < b))[0]
        if sel.size:
            out[sel] = np.asarray(tensor_rows(t, name, a, b), dtype=np.float32)[flat[sel] - a]
    return out.reshape(*ids.shape, k)


# Tokens per block of the FFN's activation: the gate's and up's outputs for all tokens, with
# their temporaries, would be four times the activation (0.6 GB on Qwen2.5-1.5B at 4,096 tokens).
FFN_TOKEN_BLOCK = 256


def _gated_ffn(x: np.ndarray, wg: np.ndarray, wu: np.ndarray, act_fn: str) -> np.ndarray:
    """act(x wg^T) * (x wu^T) for x (..., hidden) -> float32 (..., ffn), a block of tokens at a time."""
    flat = x.reshape(-1, x.shape[-1])
    out = np.empty((flat.shape[0], wg.shape[0]), dtype=np.float32)
    for a in range(0, flat.shape[0], FFN_TOKEN_BLOCK):
        xb = flat[a : a + FFN_TOKEN_BLOCK]
        g = xb @ wg.T
        if act_fn == "gelu_tanh":
            gated = gelu_tanh(g)
        elif act_fn == "relu2":
            gated = np.square(np.maximum(g, 0))
        else:
            gated = g / (1.0 + np.exp(-g))
        out[a : a + FFN_TOKEN_BLOCK] = gated * (xb @ wu.T)
    return out.reshape(*x.shape[:-1], wg.shape[0])


def _layers(
    model: ImportedModel,
    ids: np.ndarray,
    quantize: QuantizeFn,
    stats: Callable[[np.ndarray], np.ndarray],
    head_too: bool,
) -> Iterator[int]:
    cfg, t = model.config, model.tensors
    h = _embed(t, ids) * np.float32(cfg.embed_scale)  # (S, T, hidden)
    s, n = ids.shape
    hd, eps = cfg.head_dim, cfg.rms_norm_eps
    for i in range(cfg.n_layers):
        p = f"blk.{i}."

        def lin(x: np.ndarray, name: str, wq: np.ndarray, p: str = p) -> np.ndarray:
            y = x @ wq.T
            bias = t.get(p + name.replace(".weight", ".bias"))
            return y + bias if bias is not None else y

        # Attention: Q, K, V share the normed input.
        x = rms_norm(h, t[p + "attn_norm.weight"], cfg.rms_norm_eps)
        hx = stats(x)
        wq = {m: quantize(p + m, t[p + m], hx) for m in ("attn_q.weight", "attn_k.weight", "attn_v.weight")}
        q = lin(x, "attn_q.weight", wq["attn_q.weight"]).reshape(s, n, cfg.n_heads, hd)
        k = lin(x, "attn_k.weight", wq["attn_k.weight"]).reshape(s, n, cfg.n_kv_heads, hd)
        v = lin(x, "attn_v.weight", wq["attn_v.weight"]).reshape(s, n, cfg.n_kv_heads, hd)
        if cfg.qk_norm:
            q = rms_norm(q, t[p + "attn_q_norm.weight"], eps)
            k = rms_norm(k, t[p + "attn_k_norm.weight"], eps)
        a = _attention(q, k, v, cfg, i)
        if cfg.sub_norms:  # BitNet (its int8 activation rounding is left out of the statistics)
            a = rms_norm(a, t[p + "attn_sub_norm.weight"], eps).astype(np.float32)
        wo = quantize(p + "attn_output.weight", t[p + "attn_output.weight"], stats(a))
        out = a @ wo.T
        h = h + (rms_norm(out, t[p + "post_attention_norm.weight"], eps) if cfg.post_norms else out)
        del q, k, v, a, out, wq, wo
        # Gated FFN (SwiGLU or GeGLU): gate and up share the normed input.
        x = rms_norm(h, t[p + "ffn_norm.weight"], cfg.rms_norm_eps)
        hx = stats(x)
        wg = quantize(p + "ffn_gate.weight", t[p + "ffn_gate.weight"], hx)
        wu = quantize(p + "ffn_up.weight", t[p + "ffn_up.weight"], hx)
        del hx
        act = _gated_ffn(x, wg, wu, cfg.ffn_act)
        del wg, wu, x
        if cfg.sub_norms:
            act = rms_norm(act, t[p + "ffn_sub_norm.weight"], eps).astype(np.float32)
        if cfg.ffn_hadamard:
            act = block_hadamard(act, cfg.ffn_hadamard)
        wd = quantize(p + "ffn_down.weight", t[p + "ffn_down.weight"], stats(act))
        out = act @ wd.T
        del act, wd
        if cfg.post_norms:
            out = rms_norm(out, t[p + "post_ffw_norm.weight"], eps)
        h = (h + out).astype(np.float32)
        yield i
    if "output.weight" in t:
        x = rms_norm(h, t["output_norm.weight"], cfg.rms_norm_eps)
        quantize("output.weight", None, stats(x))
    elif head_too:
        # Tied embeddings: the head multiplies by token_embd, so it gets the head's input statistics.
        x = rms_norm(h, t["output_norm.weight"], cfg.rms_norm_eps)
        quantize("token_embd.weight", None, stats(x))


def run_calibrated(
    model: ImportedModel,
    ids: np.ndarray,
    quantize: QuantizeFn,
    stats: Callable[[np.ndarray], np.ndarray] = hessian,
    *,
    head_too: bool = False,
) -> Iterator[int]:
    """Runs the model on ids (S, T), calling quantize for every linear weight with its Hessian.

    Yields each layer index once the layer is done (for progress bars); the
    untied ``output.weight`` is handled after the last layer. ``stats`` replaces
    the Hessian by another statistic of a layer's input (the importance matrix
    takes only the diagonal, ~K times cheaper); ``head_too`` also calls back for
    a tied head, under the name ``token_embd.weight``.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 2:
        raise ValueError(f"calibration ids must be (sequences, tokens), got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= model.config.vocab_size):
        raise ValueError("calibration ids fall outside the vocabulary")
    return _layers(model, ids, quantize, stats, head_too)
