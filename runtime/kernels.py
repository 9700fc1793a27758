"""Packed low-bit matrices and the LUT matmul (numpy in, numpy out).

A :class:`PackedMatrix` holds an N x K weight matrix in edgelut's portable
bit-plane layout (docs/FORMAT.md). :func:`gemv` and :func:`gemm` multiply it
by float32 activations with the best kernel for this CPU; ``isa=`` forces one
(also ``EDGELUT_ISA``), ``n_threads=`` sets the thread count (0 = all cores).
"""

from __future__ import annotations

import numpy as np

from edgelut import _core

PackedMatrix = _core.PackedMatrix

QTYPES = ("q1", "q2", "q3", "q4", "tq")
GROUP_SIZES = (32, 64, 128)
# Code range (inclusive) per type; ternary codes are -1, 0, +1.
CODE_RANGE = {"q1": (0, 1), "q2": (0, 3), "q3": (0, 7), "q4": (0, 15), "tq": (-1, 1)}
# Level that maps to zero in the symmetric form.
CENTER = {"q1": 0.5, "q2": 1.5, "q3": 3.5, "q4": 7.5, "tq": 0.0}
PLANES = {"q1": 1, "q2": 2, "q3": 3, "q4": 4, "tq": 2}
# 2 * the weight of each bit plane.
PLANE_ICOEF = {"q1": (1,), "q2": (1, 2), "q3": (1, 2, 4), "q4": (1, 2, 4, 8), "tq": (-1, 1)}

__all__ = [
    "CENTER",
    "CODE_RANGE",
    "GROUP_SIZES",
    "PLANES",
    "PLANE_ICOEF",
    "QTYPES",
    "PackedMatrix",
    "cpu_features",
    "cpu_isa",
    "default_threads",
    "dequantize_reference",
    "from_buffer",
    "gemm",
    "gemv",
    "int8_isas",
    "pack",
    "pack_two_level",
    "supported_isas",
    "two_level_group_scales",
    "table_error_bound",
    "tables",
]


def _check_qtype(qtype: str, group_size: int) -> None:
    if qtype not in QTYPES:
        raise ValueError(f"unknown weight type {qtype!r}; expected one of {', '.join(QTYPES)}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be 32, 64 or 128, got {group_size}")


def pack(
    codes: np.ndarray,
    scales: np.ndarray,
    mins: np.ndarray | None,
    qtype: str,
    group_size: int,
) -> PackedMatrix:
    """Pack integer codes (N, K) with per-group scales (N, K/G) into the layout.

    Symmetric (``mins is None``): ``w = scale * (code - CENTER[qtype])``.
    Asymmetric: ``w = scale * code + min``. Scales and mins are stored as fp16.
    """
    _check_qtype(qtype, group_size)
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D (rows, cols), got shape {codes.shape}")
    lo, hi = CODE_RANGE[qtype]
    if codes.size and (codes.min() < lo or codes.max() > hi):
        raise ValueError(f"codes for {qtype} must lie in [{lo}, {hi}], got [{codes.min()}, {codes.max()}]")
    return _core.pack(
        codes.astype(np.int8, copy=False),
        np.asarray(scales, dtype=np.float32),
        None if mins is None else np.asarray(mins, dtype=np.float32),
        qtype,
        group_size,
    )


def pack_two_level(
    codes: np.ndarray,
    sub_scales: np.ndarray,
    sub_mins: np.ndarray,
    d: np.ndarray,
    dmin: np.ndarray,
    qtype: str,
    group_size: int,
    super_block: int,
) -> PackedMatrix:
    """Pack codes (N, K) with two-level scales (docs/ARCHITECTURE.md, "Two-level scales").

    Per group a sub-scale and a sub-min in 0..15 (N, K/G); per super-block of
    ``super_block`` weights an fp16 ``d`` and ``dmin`` (N, ceil(K/super_block)).
    The group's scale is ``d * sub_scale`` and its offset ``dmin * sub_min``
    (float32 products, as the kernels compute them); ``w = scale * code + offset``.
    """
    _check_qtype(qtype, group_size)
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D (rows, cols), got shape {codes.shape}")
    lo, hi = CODE_RANGE[qtype]
    if codes.size and (codes.min() < lo or codes.max() > hi):
        raise ValueError(f"codes for {qtype} must lie in [{lo}, {hi}], got [{codes.min()}, {codes.max()}]")
    if super_block <= 0 or super_block % group_size:
        raise ValueError(f"super_block must be a positive multiple of the group size, got {super_block}")
    subs = []
    for name, a in (("sub_scales", sub_scales), ("sub_mins", sub_mins)):
        a = np.asarray(a)
        if a.size and (a.min() < 0 or a.max() > 15):
            raise ValueError(f"{name} must lie in [0, 15], got [{a.min()}, {a.max()}]")
        subs.append(a.astype(np.uint8))
    return _core.pack_two_level(
        codes.astype(np.int8, copy=False),
        subs[0],
        subs[1],
        np.asarray(d, dtype=np.float32),
        np.asarray(dmin, dtype=np.float32),
        qtype,
        group_size,
        super_block,
    )


def two_level_group_scales(
    sub_scales: np.ndarray,
    sub_mins: np.ndarray,
    d: np.ndarray,
    dmin: np.ndarray,
    group_size: int,
    super_block: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group (scales, mins) (N, G) of two-level scales, in float32 as the kernels form them."""
    per = super_block // group_size
    ng = np.shape(sub_scales)[1]
    d16 = np.asarray(d, np.float32).astype(np.float16).astype(np.float32)
    m16 = np.asarray(dmin, np.float32).astype(np.float16).astype(np.float32)
    drep = np.repeat(d16, per, axis=1)[:, :ng]
    mrep = np.repeat(m16, per, axis=1)[:, :ng]
    return drep * np.asarray(sub_scales, np.float32), mrep * np.asarray(sub_mins, np.float32)


def from_buffer(
    buffer, n: int, k: int, qtype: str, group_size: int, asym: bool, super_block: int = 0
) -> PackedMatrix:
    """Wrap packed bytes (e.g. a slice of a memory-mapped model file) without copying."""
    _check_qtype(qtype, group_size)
    return _core.from_buffer(buffer, n, k, qtype, group_size, asym, super_block)


def _as_f32(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.float32:
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{name} must be a float array, got dtype {x.dtype}")
        x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinity")
    return np.ascontiguousarray(x)


def gemv(w: PackedMatrix, x: np.ndarray, *, isa: str = "", n_threads: int = 0) -> np.ndarray:
    """y = W @ x for one token: x (K,) float32 -> y (N,) float32."""
    x = _as_f32(x, "x")
    if x.ndim != 1:
        raise ValueError(f"gemv takes a vector x of shape ({w.k},), got shape {x.shape}")
    return _core.matmul(w, x[None, :], isa, n_threads)[0]


def gemm(
    w: PackedMatrix, x: np.ndarray, *, isa: str = "", n_threads: int = 0, int8: bool = False
) -> np.ndarray:
    """Y = X @ W.T for many tokens: X (M, K) float32 -> Y (M, N) float32.

    ``int8=True`` takes the int8 prefill path (activations quantised to int8
    per group, see csrc/kernels/lut.h for its error bound) where the ISA has
    one (scalar reference, avx2, avx512); elsewhere it is the LUT path.
    """
    x = _as_f32(x, "x")
    if x.ndim != 2:
        raise ValueError(f"gemm takes x of shape (tokens, {w.k}), got shape {x.shape}")
    return _core.matmul(w, x, isa, n_threads, int8)


def tables(w: PackedMatrix, x: np.ndarray, *, isa: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The int8 lookup tables the kernels build for x: (tables, table scales, group sums).

    ``isa=""`` runs the scalar reference builder; an ISA name runs that ISA's
    builder (bit-identical to the reference by contract).
    """
    return _core.tables(w, _as_f32(x, "x"), isa)


def cpu_isa() -> str:
    """The kernel ISA used by default (EDGELUT_ISA overrides it)."""
    return _core.cpu_isa()


def cpu_features() -> list[str]:
    """CPU features the kernels look at, by their Linux names (avx2, avx512, asimd, asimddp, i8mm)."""
    return list(_core.cpu_features())


def default_threads() -> int:
    """Threads used when a thread count of 0 is asked for: every core but the little ones of big.LITTLE."""
    return _core.hardware_threads()


def supported_isas() -> list[str]:
    """Every kernel ISA this CPU and build can run."""
    return list(_core.supported_isas())


def int8_isas() -> list[str]:
    """The supported ISAs that have an int8 prefill kernel (others take the LUT path for it)."""
    return _core.int8_isas()


def dequantize_reference(
    codes: np.ndarray, scales: np.ndarray, mins: np.ndarray | None, qtype: str, group_size: int
) -> np.ndarray:
    """Float weights from codes and group scales: the numpy oracle for the layout."""
    codes = np.asarray(codes, dtype=np.float32)
    rep = np.repeat(np.asarray(scales, dtype=np.float32), group_size, axis=1)[:, : codes.shape[1]]
    if mins is None:
        return rep * (codes - CENTER[qtype])
    mrep = np.repeat(np.asarray(mins, dtype=np.float32), group_size, axis=1)[:, : codes.shape[1]]
    return rep * codes + mrep


def table_error_bound(w: PackedMatrix, x: np.ndarray) -> np.ndarray:
    """Per-row bound on |gemv(w, x) - exact| from int8 table rounding (see csrc/kernels/lut.h).

    On the integer sub-scale path the table scale is the super-block's and the
    group sums are rounded to its steps, which adds (|s| * center + |m|) * tscale / 2
    per group.
    """
    _, tscale, _ = tables(w, x)
    _, scales, mins = w.unpack()
    per_group = 0.25 * tscale[None, :] * sum(abs(c) for c in PLANE_ICOEF[w.qtype]) * (w.group_size // 4)
    bound = (np.abs(scales) * per_group).sum(axis=1)
    if w.int_subscales:
        steps = np.abs(scales) * abs(CENTER[w.qtype]) + np.abs(mins)
        bound = bound + (steps * (0.5 * tscale[None, :])).sum(axis=1)
    return bound
