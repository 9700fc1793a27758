"""Incoherence rotation of the residual stream, fused offline into the weights (QuaRot / QuIP# style).

For an orthogonal Q (D x D) the model computes the same function when the
residual stream is carried as h Q instead of h:

* RMSNorm commutes with Q once its weight is folded away: ||h Q|| = ||h||, so
  rmsnorm(h Q) = rmsnorm(h) Q with a unit weight. Each norm's weight is first
  multiplied into the columns of the projections that read it (attn_norm into
  q/k/v, ffn_norm into gate/up, output_norm into the head) and set to 1.
* Readers of the residual (q, k, v, gate, up, the head) take W Q: (h Q)(W Q)^T = h W^T.
* Writers into it (attn_output, ffn_down) take Q^T W (and b Q for a bias), and
  the embedding table becomes E Q.

Every matrix then mixes all coordinates of its input (or output) with random
signs, which spreads outlier channels and the folded norm scales over whole
groups: the weights become incoherent and group quantisation fits them
better. Nothing is added at run time.

Q = diag(s) (H_p kron R_m) for D = p * m with p the largest power of two
dividing D: H_p the normalised Sylvester Hadamard matrix, R_m a random
orthogonal matrix (Haar, QR of a Gaussian) for the odd factor (896 = 128 * 7,
576 = 64 * 9) and s random signs, seeded so a conversion is reproducible.

The FFN's inner dimension cannot be rotated offline (SwiGLU is elementwise),
so ffn_down's input gets an online transform (QuaRot's R4): the engine and the
numpy reference multiply the activation by a block-diagonal normalised
Hadamard matrix H (blocks of the largest power of two dividing the FFN width,
at most 1024: n log2(block) adds a token, nothing next to ffn_down itself),
and ffn_down holds W diag(s) H. The random signs s are absorbed offline into
the rows of ffn_up (silu(g) * (s u) = s (silu(g) * u)).

Limits: the head must be its own tensor, because the folded output norm makes
it differ from the rotated embedding; a tied model is untied (the head is
written as an extra matrix, vocab x hidden weights more). Families with norms
that do not commute with Q (Gemma 3's post-attention/post-FFN norms sit between
a writer and the residual) are refused, as is a model rotated already.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from edgelut.models.config import ImportedModel
from edgelut.models.reference import block_hadamard

__all__ = ["ffn_block", "hadamard", "random_rotation", "rotate_model", "rotation_problem"]

READERS = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "ffn_gate.weight", "ffn_up.weight")
WRITERS = ("attn_output", "ffn_down")


def hadamard(n: int) -> np.ndarray:
    """The normalised Sylvester Hadamard matrix (n a power of two), float64, orthogonal."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Sylvester Hadamard matrix needs a power of two, got {n}")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def random_rotation(d: int, seed: int = 0) -> np.ndarray:
    """diag(signs) (H_p kron R_m), d = p * m with p a power of two and m odd; float64 (d, d)."""
    rng = np.random.default_rng(seed)
    p = d & -d  # the largest power of two dividing d
    m = d // p
    r = np.ones((1, 1))
    if m > 1:
        q, tri = np.linalg.qr(rng.standard_normal((m, m)))
        r = q * np.sign(np.diag(tri))  # Haar: fix the signs QR leaves arbitrary
    signs = rng.choice([-1.0, 1.0], size=d)
    return signs[:, None] * np.kron(hadamard(p), r)


def rotation_problem(model: ImportedModel) -> str | None:
    """Why the rotation cannot be fused into this model, or None."""
    cfg = model.config
    if cfg.post_norms:
        return (
            f"{cfg.architecture}: post-attention/post-FFN norms sit between the output projections and the "
            "residual, so the rotation cannot be folded through them"
        )
    if cfg.ffn_hadamard:
        return "the model is rotated already (it has an online FFN Hadamard)"
    t = model.tensors
    for i in range(cfg.n_layers):
        for name in ("attn_norm.weight", "ffn_norm.weight"):
            if f"blk.{i}.{name}" not in t:
                return f"blk.{i}.{name} is missing"
    return None


MAX_FFN_BLOCK = 1024


def ffn_block(intermediate: int) -> int:
    """The online Hadamard block for an FFN width: its largest power-of-two divisor, at most 1024
    ($EDGELUT_ROTATE_FFN=0 turns the online half off, for A/B measurements)."""
    if os.environ.get("EDGELUT_ROTATE_FFN", "").strip() == "0":
        return 0
    block = min(intermediate & -intermediate, MAX_FFN_BLOCK)
    return block if block > 1 else 0


def rotate_model(model: ImportedModel, seed: int = 0) -> ImportedModel:
    """The same model with its residual stream rotated by :func:`random_rotation` (float weights)
    and ffn_down's input by an online block Hadamard (:func:`ffn_block`).

    Returns a new ImportedModel (the input is not changed) with untied head,
    unit norm weights and no source codes (the rotated weights are new).
    Raises ValueError for a family it does not support.
    """
    problem = rotation_problem(model)
    if problem:
        raise ValueError(f"cannot rotate: {problem}")
    cfg = model.config
    src = model.tensors
    q = random_rotation(cfg.hidden_size, seed)
    block = ffn_block(cfg.intermediate_size)
    signs = np.random.default_rng([seed, 1]).choice([-1.0, 1.0], size=cfg.intermediate_size)
    t: dict[str, np.ndarray] = {}
    for name in src:
        t[name] = np.asarray(src[name], dtype=np.float32)

    def fold(norm: str, names: tuple[str, ...]) -> None:
        w = t[norm].astype(np.float64)
        for n in names:
            t[n] = t[n].astype(np.float64) * w[None, :]
        t[norm] = np.ones_like(t[norm])

    head = t.get("output.weight", t["token_embd.weight"])
    t["output.weight"] = head.astype(np.float64) * t["output_norm.weight"].astype(np.float64)[None, :]
    t["output_norm.weight"] = np.ones_like(t["output_norm.weight"])
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        fold(p + "attn_norm.weight", (p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"))
        fold(p + "ffn_norm.weight", (p + "ffn_gate.weight", p + "ffn_up.weight"))
        for n in READERS:
            t[p + n] = (t[p + n].astype(np.float64) @ q).astype(np.float32)
        if block:
            t[p + "ffn_up.weight"] = (t[p + "ffn_up.weight"] * signs[:, None]).astype(np.float32)
            down = t[p + "ffn_down.weight"].astype(np.float64) * signs[None, :]
            t[p + "ffn_down.weight"] = block_hadamard(down, block)
        for n in WRITERS:
            t[f"{p}{n}.weight"] = (q.T @ t[f"{p}{n}.weight"].astype(np.float64)).astype(np.float32)
            if f"{p}{n}.bias" in t:
                t[f"{p}{n}.bias"] = (t[f"{p}{n}.bias"].astype(np.float64) @ q).astype(np.float32)
    t["output.weight"] = (t["output.weight"] @ q).astype(np.float32)
    t["token_embd.weight"] = (t["token_embd.weight"].astype(np.float64) @ q).astype(np.float32)
    config = dataclasses.replace(cfg, tie_embeddings=False, ffn_hadamard=block)
    # Keep the importer's order (the file writer orders by the config anyway); the head is new when tied.
    return ImportedModel(config, t, model.tokenizer, source=model.source, source_codes={})
