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
from typing import Any

import numpy as np

from edgelut.kernels import CENTER, CODE_RANGE, GROUP_SIZES, QTYPES
from edgelut.quantize.rtn import DEFAULT_CLIP_GRID, quantize_rtn
from edgelut.quantize.twolevel import TwoLevel, quantize_two_level

__all__ = ["GPTQFactor", "gptq_factor", "hessian", "quantize_gptq", "quantize_gptq_two_level"]


def hessian(x: np.ndarray) -> np.ndarray:
    """H = 2 X^T X / tokens (float32, as the reference GPTQ) for inputs x (..., K).

    One product over all tokens: numpy computes ``x.T @ x`` as a symmetric rank-k
    update straight into the result, while summing it over blocks of tokens would
    allocate a K x K temporary per block (321 MB on Qwen2.5-1.5B's ffn_down).
    """
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1, np.shape(x)[-1]))
    h = x.T @ x
    h *= np.float32(2.0 / max(1, x.shape[0]))
    return h


@dataclass(frozen=True)
class GPTQFactor:
    """What GPTQ needs from a Hessian: its diagonal, dead columns and the upper factor of H^-1.

    Tensors that read the same input (Q/K/V; gate/up) have the same Hessian,
    so one factorisation serves them all (see :func:`gptq_factor`).
    """

    diag: np.ndarray  # (K,) float64 diag(H) before damping, dead columns set to 1
    dead: np.ndarray  # (K,) bool: inputs that are never active
    hinv_upper: np.ndarray  # (K, K) upper U with U^T U = (H + damp)^-1, H's dtype
    damp: float = 0.01  # the relative damping the factorisation needed (raised if 1% was not enough)


# Relative dampings tried in turn when the Cholesky factorisation of H + damp fails (a float32
# Hessian of a nearly rank-deficient input); the reference GPTQ stops with an error instead.
DAMP_RETRIES = (10.0, 100.0)


def gptq_factor(h: np.ndarray, damp: float = 0.01, *, overwrite: bool = False) -> GPTQFactor:
    """Factorises a Hessian for :func:`quantize_gptq` (column order as given).

    The upper Cholesky factor of H^-1 comes from one Cholesky of the
    order-reversed H and one triangular inverse: with P the reversal and
    P H P = L L^T, H^-1 = (P L^-T P)(P L^-1 P) where P L^-T P is lower
    triangular, so U = P L^-1 P. That is about 3x fewer flops than inverting H
    and factorising the inverse, and avoids forming the (worse conditioned) inverse.

    Memory: one K x K buffer in H's dtype (float32 or float64; other types
    become float32), a copy of ``h``, or ``h`` itself with ``overwrite`` (its
    contents are then the factor). Every step works in place in that buffer: the
    reversal, a blocked Cholesky, the triangular inverse and the reversal back.
    On Qwen2.5-1.5B's ffn_down (K = 8,960) that is 321 MB in float32, where
    numpy's cholesky alone holds three K x K arrays (input, LAPACK work copy, result).
    If H + damp is not positive definite the damping is raised (DAMP_RETRIES);
    the Cholesky leaves H's strict upper triangle untouched, so H is restored from it.
    """
    h = np.asarray(h)
    k = h.shape[0] if h.ndim else 0
    if h.shape != (k, k):
        raise ValueError(f"Hessian must be square, got shape {h.shape}")
    dtype = h.dtype if h.dtype in (np.float32, np.float64) else np.float32
    a = h if overwrite and h.dtype == dtype and h.flags.c_contiguous else np.array(h, dtype=dtype)
    diag = np.diagonal(a).astype(np.float64)
    dead = diag <= 0
    diag[dead] = 1.0
    _reverse_inplace(a)
    rdiag = diag[::-1]
    mean = float(np.mean(diag))
    for i, scale in enumerate((1.0, *DAMP_RETRIES)):
        if i:
            _restore_lower(a)
        np.fill_diagonal(a, rdiag + scale * damp * mean)
        try:
            _cholesky_lower_inplace(a)
            break
        except np.linalg.LinAlgError:
            if i == len(DAMP_RETRIES):
                raise ValueError(
                    f"Hessian ({k} x {k}) is not positive definite even with damping {scale * damp:g}"
                ) from None
    _zero_upper(a)
    _invert_lower_inplace(a)
    _reverse_inplace(a)
    return GPTQFactor(diag, dead, a, scale * damp)


def _reverse_inplace(a: np.ndarray, chunk: int = 1 << 20) -> None:
    """a <- a[::-1, ::-1] (a C-contiguous square) without a second buffer: element i of the
    flat array swaps with element size-1-i, a chunk at a time."""
    f = a.reshape(-1)  # a view: a is contiguous
    n = f.size
    for s in range(0, n // 2, chunk):
        e = min(s + chunk, n // 2)
        tmp = f[s:e].copy()
        f[s:e] = f[n - e : n - s][::-1]
        f[n - e : n - s] = tmp[::-1]


_CONTROLLER: list[Any] = []


def _one_thread() -> Any:
    """A context in which BLAS/LAPACK use one thread, for the 256-wide diagonal blocks.

    OpenBLAS splits even a 256 x 256 potrf/getrf over its threads, which then wait for each
    other: on the shared 2-core machine at load 9 a float32 256 x 256 inverse took 0.33 s
    threaded and 0.0095 s on one thread. The large products between blocks stay threaded.
    """
    if not _CONTROLLER:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1, user_api="blas")


def _tril_mask(n: int) -> np.ndarray:
    return np.tri(n, dtype=bool)


def _cholesky_lower_inplace(a: np.ndarray, block: int = 256) -> None:
    """a's lower triangle <- L with L L^T = a (left-looking, blocked); the strict upper
    triangle is not touched. Raises LinAlgError if a is not positive definite."""
    n = a.shape[0]
    for j in range(0, n, block):
        e = min(j + block, n)
        d = a[j:e, j:e]
        # The update goes to a temporary, so d's strict upper part keeps H (for a retry).
        upd = d - a[j:e, :j] @ a[j:e, :j].T if j else d
        with _one_thread():
            lower = np.linalg.cholesky(upd)
            lower_inv = np.linalg.inv(lower) if e < n else None
        np.copyto(d, lower, where=_tril_mask(e - j))
        if lower_inv is not None:
            col = a[e:, j:e]
            if j:
                col -= a[e:, :j] @ a[j:e, :j].T
            # col <- col L_jj^-T (the rows below the diagonal block)
            col[...] = col @ lower_inv.T


def _restore_lower(a: np.ndarray, block: int = 256) -> None:
    """a's strict lower triangle <- its strict upper triangle transposed (a symmetric again)."""
    n = a.shape[0]
    for j in range(0, n, block):
        e = min(j + block, n)
        d = a[j:e, j:e]
        np.copyto(d, d.T.copy(), where=~_tril_mask(e - j).T)
        if e < n:
            a[e:, j:e] = a[j:e, e:].T


def _zero_upper(a: np.ndarray, block: int = 256) -> None:
    n = a.shape[0]
    for j in range(0, n, block):
        e = min(j + block, n)
        a[j:e, e:] = 0
        d = a[j:e, j:e]
        d[~_tril_mask(e - j)] = 0


def _invert_lower_inplace(a: np.ndarray, block: int = 256) -> None:
    """a <- a^-1 for a lower-triangular a (zeros above the diagonal), blocked as LAPACK's
    trtri: no identity matrix and no second K x K buffer (numpy has no trtri, and
    scipy is not a dependency)."""
    n = a.shape[0]
    for j in range(((n - 1) // block) * block, -1, -block):
        e = min(j + block, n)
        with _one_thread():
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
    # One float64 working copy of w (its input's dtype is usually float32).
    W = np.array(w, dtype=np.float64)
    n, k = W.shape
    if np.shape(h) != (k, k):
        raise ValueError(f"Hessian has shape {np.shape(h)}, expected ({k}, {k})")
    ng = -(-k // group_size)
    lo, hi = CODE_RANGE[qtype]
    center = 0.0 if asym else CENTER[qtype]

    if act_order:
        # Only the diagonal here: h is not copied (a K x K float64 copy is 642 MB on a wide FFN).
        diag = np.diagonal(h).astype(np.float64)
        dead = diag <= 0
        diag[dead] = 1.0
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
        # The permuted copy is the factor's buffer (gptq_factor sets the dead inputs' diagonal to 1).
        factor = gptq_factor(np.asarray(h)[np.ix_(perm, perm)], damp, overwrite=True)
    assert factor is not None
    # Upper Cholesky factor of H^-1: row j holds the error-propagation weights of column j.
    hinv = factor.hinv_upper

    codes = np.zeros((n, k), dtype=np.int8)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1 = W[:, i1:i2].copy()
        Err1 = np.zeros_like(W1)
        H1 = hinv[i1:i2, i1:i2].astype(np.float64)
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
        # The lazy update, a slab of columns at a time: the product for all the remaining
        # columns at once would be a temporary as large as W.
        for c in range(i2, k, 1024):
            W[:, c : c + 1024] -= Err1 @ hinv[i1:i2, c : c + 1024]
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
    if factor is not None and not act_order:
        importance = np.where(factor.dead, 0.0, factor.diag).astype(np.float32)
    else:
        diag = np.diagonal(h).astype(np.float32)
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
