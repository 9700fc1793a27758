"""GPTQ: quantise columns one by one and push each column's error onto the rest.

With H = 2 X^T X from calibration inputs X (tokens, K), the output error of a
layer is (w - w_q) H (w - w_q)^T per row. GPTQ quantises column j, then
updates the not-yet-quantised columns by -err_j * Hinv[j, j+1:] / Hinv[j, j]
using the upper Cholesky factor of H^-1 (damped by 1% of the mean diagonal).
Updates to columns outside the current block of 128 are applied lazily, once
per block, as one matrix product. All rows are processed at once (numpy).

Group scales use the same form as :func:`quantize_rtn` (fp16 scales, optional
fp16 mins) and its clip search weighted by diag(H). They are computed from the
updated weights when a group's first column is reached, or, with act-order
(columns in order of decreasing diag(H)), once up front from the original
weights ("static groups") so that each group's scale is well defined whatever
the order. Codes are always returned in the original column order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgelut.kernels import CENTER, CODE_RANGE, GROUP_SIZES, QTYPES
from edgelut.quantize.rtn import DEFAULT_CLIP_GRID, quantize_rtn
from edgelut.quantize.twolevel import TwoLevel, quantize_two_level

__all__ = ["GPTQFactor", "gptq_factor", "hessian", "quantize_gptq", "quantize_gptq_two_level"]


def hessian(x: np.ndarray) -> np.ndarray:
    """H = 2 X^T X / tokens (float64) for inputs x (..., K)."""
    x = np.asarray(x).reshape(-1, np.shape(x)[-1])
    # Summed over blocks of tokens: widening all of x to float64 at once would cost
    # as much as H itself on a wide FFN (4096 tokens x 8960 = 294 MB on Qwen2.5 1.5B).
    h = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
    for a in range(0, x.shape[0], 512):
        xb = x[a : a + 512].astype(np.float64)
        h += xb.T @ xb
    h *= 2.0 / max(1, x.shape[0])
    return h


@dataclass(frozen=True)
class GPTQFactor:
    """What GPTQ needs from a Hessian: its diagonal, dead columns and the upper factor of H^-1.

    Tensors that read the same input (Q/K/V; gate/up) have the same Hessian,
    so one factorisation serves them all (see :func:`gptq_factor`).
    """

    diag: np.ndarray  # (K,) diag(H) before damping, dead columns set to 1
    dead: np.ndarray  # (K,) bool: inputs that are never active
    hinv_upper: np.ndarray  # (K, K) upper U with U^T U = (H + damp)^-1


def gptq_factor(h: np.ndarray, damp: float = 0.01) -> GPTQFactor:
    """Factorises a Hessian for :func:`quantize_gptq` (column order as given).

    The upper Cholesky factor of H^-1 comes from one Cholesky of the
    order-reversed H and one triangular inverse: with P the reversal and
    P H P = L L^T, H^-1 = (P L^-T P)(P L^-1 P) where P L^-T P is lower
    triangular, so U = P L^-1 P. That is about 3x fewer flops than inverting H
    and factorising the inverse, and avoids forming the (worse conditioned) inverse.
    """
    k = h.shape[0]
    if np.shape(h) != (k, k):
        raise ValueError(f"Hessian must be square, got shape {np.shape(h)}")
    # Memory: K x K float64 is 642 MB for Qwen2.5 1.5B's ffn_down (K = 8960), so the
    # copies are counted: the reversed damped copy, Cholesky's work array and its
    # result live together once; the inverse is then made in place.
    rev = np.array(h[::-1, ::-1], dtype=np.float64)
    diag = np.diagonal(rev)[::-1].copy()
    dead = diag <= 0
    diag[dead] = 1.0
    d = rev.reshape(-1)[:: k + 1]  # a view of rev's diagonal
    d[dead[::-1]] = 1.0
    d += damp * np.mean(diag)
    lower = np.linalg.cholesky(rev)
    del rev, d
    _invert_lower_inplace(lower)
    return GPTQFactor(diag, dead, np.ascontiguousarray(lower[::-1, ::-1]))


def _invert_lower_inplace(a: np.ndarray, block: int = 256) -> None:
    """a <- a^-1 for a lower-triangular a (zeros above the diagonal), blocked as LAPACK's
    trtri: no identity matrix and no second K x K buffer (numpy has no trtri, and
    scipy is not a dependency)."""
    n = a.shape[0]
    for j in range(((n - 1) // block) * block, -1, -block):
        e = min(j + block, n)
        d_inv = np.linalg.inv(a[j:e, j:e])
        if e < n:
            # Rows below: the already inverted lower-right part times this block column,
            # then times the inverse of the diagonal block, negated.
            a[e:, j:e] = -((a[e:, e:] @ a[e:, j:e]) @ d_inv)
        a[j:e, j:e] = np.tril(d_inv)


def _fp16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float64)


def quantize_gptq(
    w: np.ndarray,
    h: np.ndarray,
    qtype: str,
    group_size: int,
    *,
    asym: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    clip_grid: np.ndarray | None = DEFAULT_CLIP_GRID,
    factor: GPTQFactor | None = None,
    static_groups: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """w (N, K), Hessian h (K, K) -> codes int8 (N, K), scales (N, G), mins (N, G) or None.

    ``factor`` is ``gptq_factor(h, damp)`` computed once for tensors sharing an
    input; it is ignored with act-order (the factor depends on the column order).
    ``static_groups`` = (scales, mins) fixes every group's scale and offset up
    front (two-level scales, :func:`quantize_gptq_two_level`); GPTQ then only
    chooses codes.
    """
    if qtype not in QTYPES:
        raise ValueError(f"unknown weight type {qtype!r}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be 32, 64 or 128, got {group_size}")
    w = np.asarray(w, dtype=np.float64)
    n, k = w.shape
    h = np.array(h, dtype=np.float64)
    if h.shape != (k, k):
        raise ValueError(f"Hessian has shape {h.shape}, expected ({k}, {k})")
    ng = -(-k // group_size)
    lo, hi = CODE_RANGE[qtype]
    center = 0.0 if asym else CENTER[qtype]

    W = w.copy()
    if act_order:
        dead = np.diag(h) <= 0
        h[dead, dead] = 1.0
        diag = np.diag(h).copy()
    else:
        factor = factor if factor is not None else gptq_factor(h, damp)
        dead, diag = factor.dead, factor.diag
    W[:, dead] = 0.0

    scales = np.zeros((n, ng))
    mins = np.zeros((n, ng)) if asym else None

    def fit_group(g: int, cols: np.ndarray) -> None:
        _, s, m = quantize_rtn(
            cols.astype(np.float32),
            qtype,
            group_size,
            asym=asym,
            clip_grid=clip_grid,
            importance=diag[g * group_size : g * group_size + cols.shape[1]],
        )
        scales[:, g] = _fp16(s[:, 0])
        if mins is not None:
            mins[:, g] = _fp16(m[:, 0])

    perm = np.arange(k)
    if static_groups is not None:
        scales[:] = static_groups[0]
        if mins is not None:
            mins[:] = static_groups[1]
    elif act_order:
        for g in range(ng):  # static groups, from the original weights
            fit_group(g, W[:, g * group_size : (g + 1) * group_size])
    if act_order:
        perm = np.argsort(-diag, kind="stable")
        W = W[:, perm]
        factor = gptq_factor(h[np.ix_(perm, perm)], damp)
    assert factor is not None
    # Upper Cholesky factor of H^-1: row j holds the error-propagation weights of column j.
    hinv = factor.hinv_upper

    codes = np.zeros((n, k), dtype=np.int8)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1 = W[:, i1:i2].copy()
        Err1 = np.zeros_like(W1)
        H1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = perm[i1 + i]
            g = col // group_size
            if not act_order and static_groups is None and col % group_size == 0:
                # The group's columns are still unquantised; blocks are group-aligned when
                # block_size is a multiple of group_size, so they all sit in W1.
                width = min(group_size, k - col)
                src = (
                    W1[:, i : i + width]
                    if i + width <= i2 - i1
                    else np.concatenate([W1[:, i:], W[:, i2 : i1 + i + width]], axis=1)
                )
                fit_group(g, src)
            s = scales[:, g]
            safe = np.where(s != 0, s, 1.0)
            x = W1[:, i]
            if asym:
                q = np.clip(np.rint((x - mins[:, g]) / safe), lo, hi)
                deq = s * q + mins[:, g]
            else:
                q = np.clip(np.rint(x / safe + center), lo, hi)
                deq = s * (q - center)
            codes[:, col] = q.astype(np.int8)
            err = (x - deq) / H1[i, i]
            W1[:, i:] -= np.outer(err, H1[i, i:])
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ hinv[i1:i2, i2:]
    return codes, scales.astype(np.float32), None if mins is None else mins.astype(np.float32)


def quantize_gptq_two_level(
    w: np.ndarray,
    h: np.ndarray,
    qtype: str,
    group_size: int,
    super_block: int,
    *,
    damp: float = 0.01,
    act_order: bool = False,
    factor: GPTQFactor | None = None,
) -> TwoLevel:
    """GPTQ codes under two-level scales (quantize/twolevel.py).

    A super-block's d and dmin depend on all its groups, so the groups cannot be
    fitted one at a time as GPTQ reaches them: the two-level scales are fitted
    once from the original weights (weighted by diag(H)), as act-order's static
    groups are, and GPTQ chooses the codes under them, in either column order.
    """
    h = np.asarray(h, dtype=np.float64)
    diag = np.diag(h).astype(np.float32)
    importance = np.where(diag > 0, diag, 0.0)
    tl = quantize_two_level(np.asarray(w, np.float32), qtype, group_size, super_block, importance=importance)
    scales, mins = tl.group_scales()
    codes, _, _ = quantize_gptq(
        w,
        h,
        qtype,
        group_size,
        asym=True,
        damp=damp,
        act_order=act_order,
        factor=factor,
        static_groups=(scales, mins),
    )
    tl.codes = codes
    return tl
