"""Round-to-nearest quantisation with group scales (the baseline method).

``quantize_rtn`` maps float weights (N, K) to integer codes plus per-group
scales (and mins when asymmetric) in the form the packer takes. The clipping
search shrinks each group's range and keeps the scale with the smallest
squared error, which is what makes low-bit RTN usable. Given calibration
statistics (``importance`` = the diagonal of X^T X, one value per input
feature), the error is weighted by it, so the search minimises the expected
*output* error ||X W^T - X W_q^T||^2 (up to the cross terms) instead of the
weight error. With an importance, each weight's term is also scaled by
``sqrt(sigma2 + w^2)`` (sigma2 = twice the mean square of its row's block of 256
weights), as llama.cpp's K-quants do: the larger weights of a group get the
finer fit. After the grid, a few rounds of alternating least squares refit
each group's scale (and min) to its codes and requantise, kept only while the
error drops.

The search runs in one numba kernel (:func:`_search_kernel`) that walks the
groups in parallel and scores every clip candidate in registers; the numpy
version (:func:`quantize_rtn_ref`) is the readable oracle it must match bit for
bit (same float32 arithmetic, same fp16 rounding of the stored scale and min,
the error summed in float64 in both so near-ties resolve the same way).
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np

from edgelut.kernels import CENTER, CODE_RANGE, GROUP_SIZES, QTYPES

__all__ = ["block_sigma2", "magnitude_weights", "quantize_rtn", "quantize_rtn_ref"]

DEFAULT_CLIP_GRID = np.linspace(1.0, 0.5, 11, dtype=np.float32)

# Least-squares refit rounds after the clip search (0 = the plain grid search). 3 measured
# better than 0 on SmolLM2 RTN at q4 g64, q3 g32 and q2 g32 (docs/benchmarks-history.md, "Quantiser
# speed and the asymmetric clip search").
DEFAULT_REFINE = 3

# The magnitude term of the importance weighting (module docstring): sigma2 is this times the
# mean square of the block; 0 turns the term off. 2, the K-quants' factor, was best of 0/1/2/4
# on Qwen2.5-Coder-0.5B q3 (within about 2%), took its q2 file from 92.5 to 84.2 and the 1.5B
# q3 default from 21.10 to 20.80 (docs/benchmarks-history.md, "Magnitude-weighted importance").
DEFAULT_MAGNITUDE = 2.0
MAGNITUDE_BLOCK = 256


def _refine_rounds(refine: int | None) -> int:
    """The refit rounds to use: the argument, else $EDGELUT_RTN_REFINE (for A/B runs of the CLI)."""
    if refine is None:
        env = os.environ.get("EDGELUT_RTN_REFINE", "")
        refine = int(env) if env.strip() else DEFAULT_REFINE
    if refine < 0:
        raise ValueError(f"refine must be >= 0, got {refine}")
    return int(refine)


def _magnitude(magnitude: float | None) -> float:
    """The magnitude factor to use: the argument, else $EDGELUT_RTN_MAGNITUDE (for A/B runs)."""
    if magnitude is None:
        env = os.environ.get("EDGELUT_RTN_MAGNITUDE", "")
        magnitude = float(env) if env.strip() else DEFAULT_MAGNITUDE
    if not magnitude >= 0:
        raise ValueError(f"magnitude must be >= 0, got {magnitude}")
    return float(magnitude)


def block_sigma2(g: np.ndarray, per: int, magnitude: float) -> np.ndarray:
    """magnitude * mean(w^2) per row and block of ``per`` groups of g (N, G, S): (N, blocks) float32.

    Padding in a partial last group counts as zeros; a partial last block averages its own groups.
    """
    n, ng, size = g.shape
    nb = -(-ng // per)
    out = np.empty((n, nb), dtype=np.float32)
    for b in range(nb):
        blk = g[:, b * per : (b + 1) * per]
        sq = np.square(blk, dtype=np.float64).sum(axis=(1, 2))
        out[:, b] = (magnitude * sq / (blk.shape[1] * size)).astype(np.float32)
    return out


def magnitude_weights(weight: np.ndarray, g: np.ndarray, sigma2: np.ndarray, per: int) -> np.ndarray:
    """The per-element error weights weight * sqrt(sigma2 + w^2), float32 as the kernels form them."""
    s2 = np.repeat(sigma2, per, axis=1)[:, : g.shape[1], None]
    return (weight * np.sqrt(s2 + g * g)).astype(np.float32)


def _error_weights(
    importance: np.ndarray | None, g: np.ndarray, k: int, per: int, magnitude: float | None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """What the numba kernels take for the error weights of g (N, G, S): the column weights
    (G, S) (ones without an importance), sigma2 (N, blocks of ``per`` groups) and whether the
    magnitude term applies (only with an importance)."""
    n, ng, size = g.shape
    weight = _weights(importance, k, size)
    mag = 0.0 if weight is None else _magnitude(magnitude)
    weight = np.ones((ng, size), np.float32) if weight is None else weight[0]
    sigma2 = block_sigma2(g, per, mag) if mag > 0 else np.zeros((n, 1), np.float32)
    return np.ascontiguousarray(weight, dtype=np.float32), sigma2, mag > 0


@numba.njit(cache=True, inline="always")
def _group_weights(wj: np.ndarray, gj: np.ndarray, s2: np.float32, use_mag: bool, out: np.ndarray) -> None:
    """One group's error weights into out: wj, times sqrt(s2 + w^2) with the magnitude term."""
    for i in range(gj.shape[0]):
        if use_mag:
            out[i] = wj[i] * np.sqrt(s2 + gj[i] * gj[i])
        else:
            out[i] = wj[i]


# Kernel mode ids (numba takes plain ints better than strings).
_SYM, _ASYM, _TQ_SYM, _TQ_ASYM = 0, 1, 2, 3


def _groups(w: np.ndarray, group_size: int) -> tuple[np.ndarray, int]:
    n, k = w.shape
    ng = -(-k // group_size)
    padded = np.zeros((n, ng * group_size), dtype=np.float32)
    padded[:, :k] = w
    return padded.reshape(n, ng, group_size), ng


def _check(w: np.ndarray, qtype: str, group_size: int) -> np.ndarray:
    if qtype not in QTYPES:
        raise ValueError(f"unknown weight type {qtype!r}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be 32, 64 or 128, got {group_size}")
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D, got shape {w.shape}")
    return w


def _weights(importance: np.ndarray | None, k: int, group_size: int) -> np.ndarray | None:
    """Per-element error weights (1, G, group_size) from importance (K,), or None."""
    if importance is None:
        return None
    imp = np.asarray(importance, dtype=np.float32).reshape(-1)
    if imp.shape[0] != k:
        raise ValueError(f"importance has {imp.shape[0]} values, the weights have {k} columns")
    # A small floor so a group whose inputs are never active still gets a sane scale.
    weight, _ = _groups(imp[None, :], group_size)
    return weight + 1e-6 * weight.mean(axis=-1, keepdims=True) + 1e-12


# -- numpy reference -----------------------------------------------------------------------------


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


def quantize_rtn_ref(
    w: np.ndarray,
    qtype: str,
    group_size: int,
    *,
    asym: bool = False,
    clip_grid: np.ndarray | None = DEFAULT_CLIP_GRID,
    importance: np.ndarray | None = None,
    magnitude: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """numpy version of :func:`quantize_rtn` (same contract, same result; slow)."""
    w = _check(w, qtype, group_size)
    n, k = w.shape
    g, ng = _groups(w, group_size)
    weight = _weights(importance, k, group_size)
    if weight is None:
        weight = np.float32(1.0)
    elif (mag := _magnitude(magnitude)) > 0:
        per = max(1, MAGNITUDE_BLOCK // group_size)
        weight = magnitude_weights(weight, g, block_sigma2(g, per, mag), per)
    grid = [np.float32(1.0)] if clip_grid is None else list(clip_grid)
    best_err = np.full((n, ng), np.inf, dtype=np.float64)
    best_codes = np.zeros(g.shape, dtype=np.int8)
    best_scale = np.zeros((n, ng), dtype=np.float32)
    best_min = np.zeros((n, ng), dtype=np.float32) if asym else None
    center = 0.0 if asym else CENTER[qtype]
    for clip in grid:
        codes, scale, mn = _quantize_groups(g, qtype, asym, np.float32(clip))
        # Scales are stored as fp16: judge the error with what will be stored.
        scale = scale.astype(np.float16).astype(np.float32)
        rec = scale * (codes - center) + (mn.astype(np.float16).astype(np.float32) if asym else 0.0)
        err = (weight * (rec - g) ** 2).sum(axis=-1, dtype=np.float64)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_codes[better] = codes[better].astype(np.int8)
        best_scale[better] = scale[..., 0][better]
        if asym:
            best_min[better] = mn[..., 0][better]
    codes = best_codes.reshape(n, ng * group_size)[:, :k]
    return np.ascontiguousarray(codes), best_scale, best_min


# -- numba kernel --------------------------------------------------------------------------------


@numba.njit(cache=True, inline="always")
def _fp16(x: np.float32) -> np.float32:
    """Round a float32 to the nearest fp16 value (ties to even), returned as float32.

    numba has no float16 type; this reproduces ``x.astype(np.float16)`` including
    subnormals and overflow to inf, working in float64 where every step is exact.
    """
    v = np.float64(x)
    if v == 0.0 or not math.isfinite(v):
        return x
    _, e = math.frexp(v)  # |v| = m * 2**e with 0.5 <= m < 1, so the leading bit is 2**(e-1)
    q = e - 11 if e - 1 >= -14 else -24  # fp16 keeps 10 bits after the leading one
    r = np.rint(math.ldexp(v, -q))
    r = math.ldexp(r, q)
    if abs(r) > 65504.0:
        r = math.copysign(math.inf, v)
    return np.float32(r)


@numba.njit(cache=True, inline="always")
def _params(
    mode: int,
    clip: np.float32,
    gmin: np.float32,
    gmax: np.float32,
    amax: np.float32,
    mean: np.float32,
    absmean: np.float32,
    hi: np.float32,
    center: np.float32,
) -> tuple[np.float32, np.float32]:
    """(scale, min) for one group and one clip factor, float32 exactly as the numpy path."""
    if mode == _SYM:
        return (amax * clip) / center, np.float32(0.0)
    if mode == _ASYM:
        lo = gmin * clip
        return (gmax * clip - lo) / hi, lo
    scale = absmean * (np.float32(2.0) * clip)
    if mode == _TQ_ASYM:
        return scale, mean
    return scale, np.float32(0.0)


@numba.njit(parallel=True, cache=True)
def _search_kernel(
    g: np.ndarray,
    weight: np.ndarray,
    grid: np.ndarray,
    stats: np.ndarray,
    mode: int,
    lo_code: np.float32,
    hi_code: np.float32,
    center: np.float32,
    codes: np.ndarray,
    scales: np.ndarray,
    mins: np.ndarray,
    refine: int,
    sigma2: np.ndarray,
    per: int,
    use_mag: bool,
) -> None:
    """Per group: score every clip in ``grid``, write the best codes/scale/min.

    Then up to ``refine`` rounds of alternating least squares: refit (scale, min)
    to the codes (scale only for symmetric types), round both to fp16, requantise
    with them, and keep the result only while the error goes down.

    g (N, G, S) float32 padded groups; weight (G, S) float32 error weights; stats
    (N, G, 5) = min, max, max|w|, mean, mean|w - mean or 0| per group (computed by
    numpy so the means round exactly as in the reference). ``center`` is the code
    offset of the reconstruction (0 for asymmetric groups). With ``use_mag`` each
    weight's error weight is weight * sqrt(sigma2 + w^2), sigma2 (N, blocks) per
    block of ``per`` groups (:func:`magnitude_weights`).
    """
    n, ng, size = g.shape
    one = np.float32(1.0)
    zero = np.float32(0.0)
    # Codes are rint((w - min) / scale + add): min is 0 for symmetric groups (x - 0 and
    # + 0 are exact, so one formula serves every mode), and symmetric types add CENTER.
    add = center if mode == _SYM else zero
    asym = mode % 2 == 1  # _ASYM and _TQ_ASYM are the odd ids
    for row in numba.prange(n):
        trial = np.empty(size, dtype=np.int8)
        wl = np.empty(size, dtype=np.float32)
        for j in range(ng):
            _group_weights(weight[j], g[row, j], sigma2[row, j // per], use_mag, wl)
            gmin = stats[row, j, 0]
            gmax = stats[row, j, 1]
            amax = stats[row, j, 2]
            mean = stats[row, j, 3]
            absmean = stats[row, j, 4]
            best = np.inf
            best_c = 0
            for c in range(grid.shape[0]):
                scale, mn = _params(mode, grid[c], gmin, gmax, amax, mean, absmean, hi_code, center)
                safe = scale if scale > zero else one
                s16 = _fp16(scale)
                m16 = _fp16(mn)
                err = 0.0
                for i in range(size):
                    x = g[row, j, i]
                    q = min(max(np.rint((x - mn) / safe + add), lo_code), hi_code)
                    d = (s16 * (q - center) + m16) - x
                    err += np.float64(wl[i] * (d * d))
                if err < best:
                    best = err
                    best_c = c
            scale, mn = _params(mode, grid[best_c], gmin, gmax, amax, mean, absmean, hi_code, center)
            safe = scale if scale > zero else one
            for i in range(size):
                q = np.rint((g[row, j, i] - mn) / safe + add)
                codes[row, j, i] = np.int8(min(max(q, lo_code), hi_code))
            scales[row, j] = _fp16(scale)
            mins[row, j] = mn
            for _ in range(refine):
                # Weighted least squares for w ~ s * (q - center) + m over the current codes.
                sw = sq = sx = sqq = sqx = 0.0
                for i in range(size):
                    wi = np.float64(wl[i])
                    q = np.float64(codes[row, j, i]) - np.float64(center)
                    x = np.float64(g[row, j, i])
                    sw += wi
                    sq += wi * q
                    sx += wi * x
                    sqq += wi * q * q
                    sqx += wi * q * x
                if asym:
                    det = sw * sqq - sq * sq
                    if not det > 0.0:
                        break
                    ns = (sw * sqx - sq * sx) / det
                    nm = (sx - ns * sq) / sw
                else:
                    if not sqq > 0.0:
                        break
                    ns = sqx / sqq
                    nm = 0.0
                s16 = _fp16(np.float32(ns))
                m16 = _fp16(np.float32(nm))
                if not s16 > zero:
                    break
                err = 0.0
                for i in range(size):
                    x = g[row, j, i]
                    q = min(max(np.rint((x - m16) / s16 + add), lo_code), hi_code)
                    trial[i] = np.int8(q)
                    d = (s16 * (q - center) + m16) - x
                    err += np.float64(wl[i] * (d * d))
                if not err < best:
                    break
                best = err
                codes[row, j, :] = trial
                scales[row, j] = s16
                mins[row, j] = m16


def quantize_rtn(
    w: np.ndarray,
    qtype: str,
    group_size: int,
    *,
    asym: bool = False,
    clip_grid: np.ndarray | None = DEFAULT_CLIP_GRID,
    importance: np.ndarray | None = None,
    refine: int | None = None,
    magnitude: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Quantise w (N, K) -> codes int8 (N, K), scales (N, G), mins (N, G) or None.

    With ``clip_grid`` each group tries every clip factor and keeps the one with
    the smallest squared reconstruction error (``None`` = plain min/max RTN),
    weighted per input feature by ``importance`` (K,) when given. ``refine`` > 0
    adds that many rounds of least-squares refitting of scale and min to the
    chosen codes (default: :data:`DEFAULT_REFINE`, or ``EDGELUT_RTN_REFINE``).
    ``magnitude`` scales the importance weighting's magnitude term (module
    docstring; default :data:`DEFAULT_MAGNITUDE`, or ``EDGELUT_RTN_MAGNITUDE``;
    0 = the importance alone); it has no effect without an importance.
    Scales come back already rounded to fp16; mins are float32 (fp16 values when
    a refit was kept).
    """
    refine = _refine_rounds(refine)
    w = _check(w, qtype, group_size)
    n, k = w.shape
    g, ng = _groups(w, group_size)
    per = max(1, MAGNITUDE_BLOCK // group_size)
    weight, sigma2, use_mag = _error_weights(importance, g, k, per, magnitude)
    grid = np.array([1.0] if clip_grid is None else clip_grid, dtype=np.float32).reshape(-1)
    lo, hi = CODE_RANGE[qtype]
    tq = qtype == "tq"
    mode = (_TQ_ASYM if asym else _TQ_SYM) if tq else (_ASYM if asym else _SYM)
    # Group statistics in numpy: the float32 means must round exactly as in the reference.
    stats = np.zeros((n, ng, 5), dtype=np.float32)
    if tq:
        if asym:
            mean = g.mean(axis=-1, keepdims=True)
            stats[..., 3] = mean[..., 0]
            stats[..., 4] = np.abs(g - mean).mean(axis=-1)
        else:
            stats[..., 4] = np.abs(g).mean(axis=-1)
    elif asym:
        stats[..., 0] = g.min(axis=-1)
        stats[..., 1] = g.max(axis=-1)
    else:
        stats[..., 2] = np.abs(g).max(axis=-1)
    center = 0.0 if asym else CENTER[qtype]
    codes = np.empty(g.shape, dtype=np.int8)
    scales = np.empty((n, ng), dtype=np.float32)
    mins = np.empty((n, ng), dtype=np.float32)
    _search_kernel(
        g,
        weight,
        grid,
        stats,
        mode,
        np.float32(lo),
        np.float32(hi),
        np.float32(center),
        codes,
        scales,
        mins,
        refine,
        sigma2,
        per,
        use_mag,
    )
    codes = codes.reshape(n, ng * group_size)[:, :k]
    return np.ascontiguousarray(codes), scales, (mins if asym else None)
