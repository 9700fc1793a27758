"""Two-level scales: 4-bit sub-scales and sub-mins per group under fp16 super-block values.

The packed layout's two-level form (docs/ARCHITECTURE.md, "Two-level scales")
stores per group of G weights one byte (sub-scale ``ls`` and sub-min ``lm``,
0..15 each) and per super-block of ``super_block`` weights an fp16 ``d`` and
``dmin``; the group's scale is ``d * ls`` and its offset ``dmin * lm``. That is
8 / G + 32 / super_block bits per weight (0.375 at G = 32, super-block 256)
instead of 32 / G (1.0) for an fp16 scale and min per group. The last
super-block of a row may be partial, so any K works (SmolLM2's 576 = 2 x 256 + 64).

The search, per super-block (numba, parallel over rows):

1. each group's float (scale, min) comes from :func:`quantize_rtn`'s clip
   search (weighted by the importance, with its magnitude term, when calibrated);
2. ``d = max scale / 15`` and ``dmin = (largest |min|, signed) / 15``;
   each group then tries its rounded sub-scale and sub-min and their
   neighbours (+-1, 9 pairs), requantising its codes for each, and keeps the
   pair with the smallest weighted squared error;
3. ``d`` and ``dmin`` are refitted by weighted least squares to the chosen
   integers and codes (rounded to fp16), and step 2's choice is repeated with
   them while the super-block's error goes down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from edgelut.kernels import CODE_RANGE, pack_two_level, two_level_group_scales
from edgelut.quantize.rtn import _check, _error_weights, _fp16, _group_weights, _groups, quantize_rtn

__all__ = ["DEFAULT_SUPER_BLOCK", "TwoLevel", "quantize_two_level", "two_level_from_groups"]

# Weights per super-block: 8 groups of 32, as K-quants; a partial last block takes any K.
DEFAULT_SUPER_BLOCK = 256
SUB_MAX = 15  # 4-bit sub-scales and sub-mins
# Rounds of (choose integers, refit d/dmin) after the first choice.
REFIT_ROUNDS = 2


@dataclass
class TwoLevel:
    """Codes with two-level scales, the form :func:`edgelut.kernels.pack_two_level` takes."""

    codes: np.ndarray  # (N, K) int8
    sub_scales: np.ndarray  # (N, G) uint8, 0..15
    sub_mins: np.ndarray  # (N, G) uint8, 0..15
    d: np.ndarray  # (N, SB) float32 (fp16 values)
    dmin: np.ndarray  # (N, SB) float32 (fp16 values)
    qtype: str
    group_size: int
    super_block: int

    def group_scales(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-group (scales, mins) (N, G) exactly as the kernels form them."""
        return two_level_group_scales(
            self.sub_scales, self.sub_mins, self.d, self.dmin, self.group_size, self.super_block
        )

    def pack(self):  # -> PackedMatrix
        return pack_two_level(
            self.codes,
            self.sub_scales,
            self.sub_mins,
            self.d,
            self.dmin,
            self.qtype,
            self.group_size,
            self.super_block,
        )


@numba.njit(cache=True, inline="always")
def _group_err(
    g: np.ndarray, wt: np.ndarray, s: np.float32, m: np.float32, hi: np.float32, out: np.ndarray
) -> float:
    """Weighted squared error of one group at scale s and offset m; its codes go to out."""
    err = 0.0
    for i in range(g.shape[0]):
        x = g[i]
        q = np.float32(0.0)
        if s > 0:
            q = min(max(np.rint((x - m) / s), np.float32(0.0)), hi)
        out[i] = np.int8(q)
        dd = (s * q + m) - x
        err += np.float64(wt[i] * (dd * dd))
    return err


@numba.njit(parallel=True, cache=True)
def _two_level_kernel(
    g: np.ndarray,
    weight: np.ndarray,
    gs: np.ndarray,
    gm: np.ndarray,
    per: int,
    hi: np.float32,
    rounds: int,
    sigma2: np.ndarray,
    use_mag: bool,
    codes: np.ndarray,
    ls_out: np.ndarray,
    lm_out: np.ndarray,
    d_out: np.ndarray,
    dmin_out: np.ndarray,
) -> None:
    """g (N, G, S) groups, weight (G, S), gs/gm (N, G) float group scales/mins -> the outputs.

    With ``use_mag`` the error weights are weight * sqrt(sigma2 + w^2), sigma2 (N, super-blocks)
    (quantize/rtn.py, :func:`magnitude_weights`).
    """
    n, ng, size = g.shape
    nsb = d_out.shape[1]
    top = np.float32(SUB_MAX)
    for row in numba.prange(n):
        trial = np.empty(size, dtype=np.int8)
        wrow = np.empty((per, size), dtype=np.float32)
        for b in range(nsb):
            g0 = b * per
            g1 = min(ng, g0 + per)
            for j in range(g0, g1):
                _group_weights(weight[j], g[row, j], sigma2[row, b], use_mag, wrow[j - g0])
            smax = np.float32(0.0)
            mbig = np.float32(0.0)
            for j in range(g0, g1):
                smax = max(smax, gs[row, j])
                if abs(gm[row, j]) > abs(mbig):
                    mbig = gm[row, j]
            d = _fp16(smax / top)
            dm = _fp16(mbig / top)
            best_total = np.inf
            for _ in range(rounds + 1):
                total = 0.0
                # Choose each group's integers for this (d, dmin).
                for j in range(g0, g1):
                    r_s = 0.0 if d == 0 else np.rint(gs[row, j] / d)
                    r_m = 0.0 if dm == 0 else np.rint(gm[row, j] / dm)
                    best = np.inf
                    bs = 0
                    bm = 0
                    for a in range(-1, 2):
                        cs = min(max(r_s + a, 0.0), SUB_MAX)
                        for c in range(-1, 2):
                            cm = min(max(r_m + c, 0.0), SUB_MAX)
                            err = _group_err(
                                g[row, j], wrow[j - g0], d * np.float32(cs), dm * np.float32(cm), hi, trial
                            )
                            if err < best:
                                best = err
                                bs = int(cs)
                                bm = int(cm)
                    ls_out[row, j] = bs
                    lm_out[row, j] = bm
                    total += _group_err(
                        g[row, j], wrow[j - g0], d * np.float32(bs), dm * np.float32(bm), hi, codes[row, j]
                    )
                if not total < best_total:
                    break
                best_total = total
                d_out[row, b] = d
                dmin_out[row, b] = dm
                # Refit (d, dmin) to the integers and codes: weighted least squares on
                # x ~ d * (ls * q) + dmin * lm.
                saa = sab = sbb = sax = sbx = 0.0
                for j in range(g0, g1):
                    for i in range(size):
                        wi = np.float64(wrow[j - g0, i])
                        a = np.float64(ls_out[row, j]) * np.float64(codes[row, j, i])
                        c = np.float64(lm_out[row, j])
                        x = np.float64(g[row, j, i])
                        saa += wi * a * a
                        sab += wi * a * c
                        sbb += wi * c * c
                        sax += wi * a * x
                        sbx += wi * c * x
                det = saa * sbb - sab * sab
                if not det > 1e-30 * max(saa * sbb, 1e-300):
                    break
                d = _fp16(np.float32((sax * sbb - sab * sbx) / det))
                dm = _fp16(np.float32((saa * sbx - sab * sax) / det))
            # Leave codes and integers consistent with the kept (d, dmin).
            d = d_out[row, b]
            dm = dmin_out[row, b]
            for j in range(g0, g1):
                best = np.inf
                bs = 0
                bm = 0
                r_s = 0.0 if d == 0 else np.rint(gs[row, j] / d)
                r_m = 0.0 if dm == 0 else np.rint(gm[row, j] / dm)
                for a in range(-1, 2):
                    cs = min(max(r_s + a, 0.0), SUB_MAX)
                    for c in range(-1, 2):
                        cm = min(max(r_m + c, 0.0), SUB_MAX)
                        err = _group_err(
                            g[row, j], wrow[j - g0], d * np.float32(cs), dm * np.float32(cm), hi, trial
                        )
                        if err < best:
                            best = err
                            bs = int(cs)
                            bm = int(cm)
                ls_out[row, j] = bs
                lm_out[row, j] = bm
                wj = wrow[j - g0]
                _group_err(g[row, j], wj, d * np.float32(bs), dm * np.float32(bm), hi, codes[row, j])


def two_level_from_groups(
    w: np.ndarray,
    scales: np.ndarray,
    mins: np.ndarray,
    qtype: str,
    group_size: int,
    super_block: int = DEFAULT_SUPER_BLOCK,
    *,
    importance: np.ndarray | None = None,
    rounds: int = REFIT_ROUNDS,
    magnitude: float | None = None,
) -> TwoLevel:
    """Two-level scales for w (N, K) starting from float per-group (scales, mins) (N, G)."""
    w = _check(w, qtype, group_size)
    if qtype == "tq":
        raise ValueError("two-level scales need a q1..q4 type (ternary groups are symmetric)")
    if super_block <= 0 or super_block % group_size or super_block > 4096:
        raise ValueError(f"super_block must be a multiple of the group size up to 4096, got {super_block}")
    n, k = w.shape
    g, ng = _groups(w, group_size)
    per = super_block // group_size
    weight, sigma2, use_mag = _error_weights(importance, g, k, per, magnitude)
    nsb = -(-ng // per)
    codes = np.zeros(g.shape, dtype=np.int8)
    ls = np.zeros((n, ng), dtype=np.uint8)
    lm = np.zeros((n, ng), dtype=np.uint8)
    d = np.zeros((n, nsb), dtype=np.float32)
    dmin = np.zeros((n, nsb), dtype=np.float32)
    _two_level_kernel(
        g,
        weight,
        np.ascontiguousarray(scales, dtype=np.float32),
        np.ascontiguousarray(mins, dtype=np.float32),
        per,
        np.float32(CODE_RANGE[qtype][1]),
        int(rounds),
        sigma2,
        use_mag,
        codes,
        ls,
        lm,
        d,
        dmin,
    )
    codes = np.ascontiguousarray(codes.reshape(n, ng * group_size)[:, :k])
    return TwoLevel(codes, ls, lm, d, dmin, qtype, group_size, super_block)


def quantize_two_level(
    w: np.ndarray,
    qtype: str,
    group_size: int,
    super_block: int = DEFAULT_SUPER_BLOCK,
    *,
    importance: np.ndarray | None = None,
    refine: int | None = None,
    magnitude: float | None = None,
) -> TwoLevel:
    """RTN with clip search, then two-level scales (module docstring)."""
    _, scales, mins = quantize_rtn(
        w, qtype, group_size, asym=True, importance=importance, refine=refine, magnitude=magnitude
    )
    assert mins is not None
    return two_level_from_groups(
        w, scales, mins, qtype, group_size, super_block, importance=importance, magnitude=magnitude
    )
