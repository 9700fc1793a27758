"""Round-to-nearest quantisation with group scales (the baseline method).

``quantize_rtn`` maps float weights (N, K) to integer codes plus per-group
scales (and mins when asymmetric) in the form the packer takes. The clipping
search shrinks each group's range and keeps the scale with the smallest
squared error, which is what makes low-bit RTN usable. Given calibration
statistics (``importance`` = the diagonal of X^T X, one value per input
feature), the error is weighted by it, so the search minimises the expected
*output* error ||X W^T - X W_q^T||^2 (up to the cross terms) instead of the
weight error.
"""

from __future__ import annotations

import numpy as np

from edgelut.kernels import CENTER, CODE_RANGE, GROUP_SIZES, QTYPES

__all__ = ["quantize_rtn"]

DEFAULT_CLIP_GRID = np.linspace(1.0, 0.5, 11, dtype=np.float32)


def _groups(w: np.ndarray, group_size: int) -> tuple[np.ndarray, int]:
    n, k = w.shape
    ng = -(-k // group_size)
    padded = np.zeros((n, ng * group_size), dtype=np.float32)
    padded[:, :k] = w
    return padded.reshape(n, ng, group_size), ng


def _quantize_groups(
    g: np.ndarray, qtype: str, asym: bool, clip: np.float32
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    lo, hi = CODE_RANGE[qtype]
    if qtype == "tq":
        if asym:
            mn = g.mean(axis=-1, keepdims=True)
            r = g - mn
        else:
            mn, r = None, g
        # absmean (BitNet b1.58) style scale, shrunk by the clip factor.
        scale = np.abs(r).mean(axis=-1, keepdims=True) * (2.0 * clip)
        safe = np.where(scale > 0, scale, 1.0)
        codes = np.clip(np.rint(r / safe), lo, hi)
        return codes, scale, mn
    if asym:
        gmin = g.min(axis=-1, keepdims=True) * clip
        gmax = g.max(axis=-1, keepdims=True) * clip
        scale = (gmax - gmin) / hi
        safe = np.where(scale > 0, scale, 1.0)
        codes = np.clip(np.rint((g - gmin) / safe), lo, hi)
        return codes, scale, gmin
    amax = np.abs(g).max(axis=-1, keepdims=True) * clip
    scale = amax / CENTER[qtype]
    safe = np.where(scale > 0, scale, 1.0)
    codes = np.clip(np.rint(g / safe + CENTER[qtype]), lo, hi)
    return codes, scale, None


def quantize_rtn(
    w: np.ndarray,
    qtype: str,
    group_size: int,
    *,
    asym: bool = False,
    clip_grid: np.ndarray | None = DEFAULT_CLIP_GRID,
    importance: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Quantise w (N, K) -> codes int8 (N, K), scales (N, G), mins (N, G) or None.

    With ``clip_grid`` each group tries every clip factor and keeps the one with
    the smallest squared reconstruction error (``None`` = plain min/max RTN),
    weighted per input feature by ``importance`` (K,) when given.
    """
    if qtype not in QTYPES:
        raise ValueError(f"unknown weight type {qtype!r}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be 32, 64 or 128, got {group_size}")
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D, got shape {w.shape}")
    n, k = w.shape
    g, ng = _groups(w, group_size)
    if importance is None:
        weight = np.float32(1.0)
    else:
        imp = np.asarray(importance, dtype=np.float32).reshape(-1)
        if imp.shape[0] != k:
            raise ValueError(f"importance has {imp.shape[0]} values, the weights have {k} columns")
        # A small floor so a group whose inputs are never active still gets a sane scale.
        weight, _ = _groups(imp[None, :], group_size)
        weight = weight + 1e-6 * weight.mean(axis=-1, keepdims=True) + 1e-12
    grid = [np.float32(1.0)] if clip_grid is None else list(clip_grid)
    best_err = np.full((n, ng), np.inf, dtype=np.float32)
    best_codes = np.zeros(g.shape, dtype=np.int8)
    best_scale = np.zeros((n, ng), dtype=np.float32)
    best_min = np.zeros((n, ng), dtype=np.float32) if asym else None
    center = 0.0 if asym else CENTER[qtype]
    for clip in grid:
        codes, scale, mn = _quantize_groups(g, qtype, asym, np.float32(clip))
        # Scales are stored as fp16: judge the error with what will be stored.
        scale = scale.astype(np.float16).astype(np.float32)
        rec = scale * (codes - center) + (mn.astype(np.float16).astype(np.float32) if asym else 0.0)
        err = (weight * (rec - g) ** 2).sum(axis=-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_codes[better] = codes[better].astype(np.int8)
        best_scale[better] = scale[..., 0][better]
        if asym:
            best_min[better] = mn[..., 0][better]
    codes = best_codes.reshape(n, ng * group_size)[:, :k]
    return np.ascontiguousarray(codes), best_scale, best_min
