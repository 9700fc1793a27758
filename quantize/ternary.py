"""Ternary quantisation with absmean scales (BitNet b1.58).

Per group of ``group_size`` weights: gamma = mean |w|, codes =
clip(round(w / gamma), -1, 1). For a checkpoint trained with this quantiser
in the loop the codes are exactly the ones it was trained with. The stored
scale is then refit by least squares over the chosen codes
(s = <w, c> / <c, c>): for weights that are already ternary (w = s * t, the
form ternary-trained checkpoints are often published in) mean |w| is s times
the fraction of non-zeros, whereas the refit recovers s exactly.
"""

from __future__ import annotations

import numpy as np

from edgelut.kernels import GROUP_SIZES

__all__ = ["quantize_ternary"]


def quantize_ternary(
    w: np.ndarray, group_size: int, *, refit: bool = True
) -> tuple[np.ndarray, np.ndarray, None]:
    """w (N, K) -> codes int8 in {-1, 0, 1} (N, K), scales (N, K/G) for the symmetric "tq" type."""
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be 32, 64 or 128, got {group_size}")
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D, got shape {w.shape}")
    n, k = w.shape
    ng = -(-k // group_size)
    g = np.zeros((n, ng * group_size), dtype=np.float32)
    g[:, :k] = w
    g = g.reshape(n, ng, group_size)
    # Padding columns are zeros; average over the real columns only.
    real = np.zeros(ng * group_size, dtype=np.float32)
    real[:k] = 1.0
    count = real.reshape(ng, group_size).sum(axis=-1)
    gamma = np.abs(g).sum(axis=-1) / count
    safe = np.where(gamma > 0, gamma, 1.0)
    codes = np.clip(np.rint(g / safe[..., None]), -1, 1)
    scale = gamma
    if refit:
        num = (g * codes).sum(axis=-1)
        den = (codes * codes).sum(axis=-1)
        scale = np.where(den > 0, num / np.maximum(den, 1.0), gamma)
    codes = codes.reshape(n, ng * group_size)[:, :k].astype(np.int8)
    return np.ascontiguousarray(codes), scale.astype(np.float16).astype(np.float32), None
