"""LUT kernels of every ISA against the scalar reference and a float64 numpy matmul.

Two oracles:

* The scalar reference (``isa="scalar"``, csrc/kernels/lut_ref.cc). The LUT
  kernels of every ISA must match it bit for bit (``np.array_equal``): they use
  the same int8 tables and the same float operation order (csrc/kernels/lut.h).
* ``W64 @ x`` in float64, with W64 dequantised from the *stored* (fp16) scales.
  The only approximation of the LUT path is the int8 rounding of the tables,
  each entry off by at most tscale[g]/2, so per output row

      |y_lut - y_exact| <= sum_g |s[row, g]| * 0.5 * tscale[g] * 0.5 * sum_p |icoef[p]| * (G / 4)

  with tscale[g] = max_c sum_j |x[4c + j]| / 127 over the chunks c of group g
  (``edgelut.kernels.table_error_bound``), plus float32 rounding, which the
  tests allow as a relative slack of 2e-5 on the sum of absolute terms.

The int8 prefill path (``gemm(..., int8=True)``) rounds the activations instead
(xscale[g] = max |x| over the group / 127), so its bound is

      |y_int8 - y_exact| <= sum_g |s[row, g]| * 0.5 * xscale[g] * sum_{k in g} |level_k - center|

and its SIMD kernel must match its own scalar reference bit for bit.
"""

from __future__ import annotations

import platform

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgelut import kernels as K
from edgelut.quantize.rtn import quantize_rtn

ISAS = K.supported_isas()
SIMD_ISAS = [i for i in ISAS if i != "scalar"]
FLOAT_SLACK = 2e-5


def make_matrix(
    rng: np.random.Generator, n: int, k: int, qtype: str, group: int, asym: bool
) -> tuple[K.PackedMatrix, np.ndarray]:
    """Random codes and scales -> (packed matrix, float64 dequantised weights)."""
    lo, hi = K.CODE_RANGE[qtype]
    codes = rng.integers(lo, hi + 1, size=(n, k))
    ng = -(-k // group)
    scales = (rng.standard_normal((n, ng)) * 0.05).astype(np.float32)
    mins = (rng.standard_normal((n, ng)) * 0.05).astype(np.float32) if asym else None
    w = K.pack(codes, scales, mins, qtype, group)
    return w, dequant64(w)


def dequant64(w: K.PackedMatrix) -> np.ndarray:
    """Float64 weights from the stored codes and fp16-rounded scales."""
    codes, scales, mins = w.unpack()
    rep = np.repeat(scales.astype(np.float64), w.group_size, axis=1)[:, : w.k]
    if mins is None:
        return rep * (codes.astype(np.float64) - K.CENTER[w.qtype])
    mrep = np.repeat(mins.astype(np.float64), w.group_size, axis=1)[:, : w.k]
    return rep * codes + mrep


def abs_terms(w: K.PackedMatrix, x: np.ndarray) -> np.ndarray:
    """Per row, the sum of the magnitudes the kernel adds up (for the float slack)."""
    codes, scales, mins = w.unpack()
    rep = np.abs(np.repeat(scales.astype(np.float64), w.group_size, axis=1)[:, : w.k])
    mag = rep * (np.abs(codes) + abs(K.CENTER[w.qtype]))
    if mins is not None:
        mag += np.abs(np.repeat(mins.astype(np.float64), w.group_size, axis=1)[:, : w.k])
    return mag @ np.abs(x.astype(np.float64))


def check_close_to_exact(w: K.PackedMatrix, w64: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    """Every token's output is within the table bound (+ float slack) of float64."""
    for i in range(x.shape[0]):
        exact = w64 @ x[i].astype(np.float64)
        bound = K.table_error_bound(w, x[i]) + FLOAT_SLACK * abs_terms(w, x[i]) + 1e-30
        err = np.abs(y[i] - exact)
        assert np.all(err <= bound), f"token {i}: worst error/bound {np.max(err / bound):.3f}"


SMALL_SHAPES = [(1, 4), (65, 33), (192, 576)]


@pytest.mark.parametrize("qtype", K.QTYPES)
@pytest.mark.parametrize("group", K.GROUP_SIZES)
@pytest.mark.parametrize("asym", [False, True])
@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_simd_bit_exact_and_within_bound(
    rng: np.random.Generator, qtype: str, group: int, asym: bool, shape: tuple[int, int]
) -> None:
    n, k = shape
    w, w64 = make_matrix(rng, n, k, qtype, group, asym)
    for m in (1, 2, 7):
        x = rng.standard_normal((m, k)).astype(np.float32)
        ref = K.gemm(w, x, isa="scalar", n_threads=1)
        check_close_to_exact(w, w64, x, ref)
        for isa in SIMD_ISAS:
            y = K.gemm(w, x, isa=isa, n_threads=1)
            assert np.array_equal(y, ref), f"{isa} differs from scalar for m={m}"
        if m == 1:
            for isa in ISAS:
                assert np.array_equal(K.gemv(w, x[0], isa=isa, n_threads=1), ref[0])


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize(
    ("qtype", "group", "asym"), [("q4", 32, True), ("q2", 128, False), ("tq", 64, False)]
)
@pytest.mark.parametrize("m", [1, 2, 7, 128])
def test_gemm_tokens_576x1536(
    rng: np.random.Generator, isa: str, qtype: str, group: int, asym: bool, m: int
) -> None:
    w, w64 = make_matrix(rng, 576, 1536, qtype, group, asym)
    x = rng.standard_normal((m, 1536)).astype(np.float32)
    y = K.gemm(w, x, isa=isa, n_threads=1)
    assert np.array_equal(y, K.gemm(w, x, isa="scalar", n_threads=1))
    check_close_to_exact(w, w64, x[:3], y[:3])


@pytest.mark.slow
@pytest.mark.parametrize("qtype", K.QTYPES)
@pytest.mark.parametrize("group", K.GROUP_SIZES)
@pytest.mark.parametrize("asym", [False, True])
def test_large_sweep(rng: np.random.Generator, qtype: str, group: int, asym: bool) -> None:
    for n, k, m in ((576, 1536, 1), (576, 1536, 128), (1000, 1000, 9)):
        w, w64 = make_matrix(rng, n, k, qtype, group, asym)
        x = rng.standard_normal((m, k)).astype(np.float32)
        ref = K.gemm(w, x, isa="scalar")
        check_close_to_exact(w, w64, x[:2], ref[:2])
        for isa in SIMD_ISAS:
            assert np.array_equal(K.gemm(w, x, isa=isa), ref)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n_threads", [1, 2, 3, 4])
def test_threads_do_not_change_results(rng: np.random.Generator, isa: str, n_threads: int) -> None:
    w, _ = make_matrix(rng, 5 * 64 + 7, 320, "q3", 64, True)
    x = rng.standard_normal((3, 320)).astype(np.float32)
    ref = K.gemm(w, x, isa="scalar", n_threads=1)
    assert np.array_equal(K.gemm(w, x, isa=isa, n_threads=n_threads), ref)
    assert np.array_equal(K.gemv(w, x[1], isa=isa, n_threads=n_threads), ref[1])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("asym", [False, True])
def test_zero_activations_give_zero(rng: np.random.Generator, isa: str, asym: bool) -> None:
    w, _ = make_matrix(rng, 130, 200, "q4", 32, asym)
    y = K.gemm(w, np.zeros((2, 200), np.float32), isa=isa)
    assert np.array_equal(y, np.zeros((2, 130), np.float32))


@pytest.mark.parametrize("qtype", ["q1", "q4", "tq"])
@pytest.mark.parametrize("asym", [False, True])
def test_large_magnitude_and_outlier(rng: np.random.Generator, qtype: str, asym: bool) -> None:
    w, w64 = make_matrix(rng, 100, 300, qtype, 64, asym)
    big = (rng.standard_normal((2, 300)) * 1e4).astype(np.float32)
    outlier = (rng.standard_normal((2, 300)) * 0.01).astype(np.float32)
    outlier[0, 17] = 3e4
    outlier[1, 299] = -3e4
    for x in (big, outlier):
        ref = K.gemm(w, x, isa="scalar")
        assert np.all(np.isfinite(ref))
        check_close_to_exact(w, w64, x, ref)
        for isa in SIMD_ISAS:
            assert np.array_equal(K.gemm(w, x, isa=isa), ref)


@pytest.mark.parametrize("qtype", K.QTYPES)
@pytest.mark.parametrize("group", K.GROUP_SIZES)
def test_error_bound_is_tight_on_average(rng: np.random.Generator, qtype: str, group: int) -> None:
    # The bound is a worst case (every entry off by half a step, all the same
    # sign); random rounding errors cancel, so the mean error sits far below it
    # but must stay within an order of magnitude or two of it.
    w, w64 = make_matrix(rng, 256, 1024, qtype, group, False)
    x = rng.standard_normal(1024).astype(np.float32)
    err = np.abs(K.gemv(w, x) - w64 @ x.astype(np.float64))
    bound = K.table_error_bound(w, x)
    ratio = err.mean() / bound.mean()
    assert 1e-3 < ratio < 0.2, ratio


def test_rtn_quantised_weights(rng: np.random.Generator) -> None:
    wf = rng.standard_normal((96, 200)).astype(np.float32)
    x = rng.standard_normal((2, 200)).astype(np.float32)
    for qtype in ("q2", "q4", "tq"):
        codes, scales, mins = quantize_rtn(wf, qtype, 64, asym=True)
        w = K.pack(codes, scales, mins, qtype, 64)
        ref = K.gemm(w, x, isa="scalar")
        check_close_to_exact(w, dequant64(w), x, ref)
        for isa in SIMD_ISAS:
            assert np.array_equal(K.gemm(w, x, isa=isa), ref)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 200),
    k=st.integers(1, 300),
    m=st.integers(1, 9),
    qtype=st.sampled_from(K.QTYPES),
    group=st.sampled_from(K.GROUP_SIZES),
    asym=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_any_shape(n: int, k: int, m: int, qtype: str, group: int, asym: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w, w64 = make_matrix(rng, n, k, qtype, group, asym)
    x = rng.standard_normal((m, k)).astype(np.float32)
    ref = K.gemm(w, x, isa="scalar")
    assert ref.shape == (m, n)
    check_close_to_exact(w, w64, x, ref)
    for isa in SIMD_ISAS:
        assert np.array_equal(K.gemm(w, x, isa=isa), ref)
    ref8 = K.gemm(w, x, isa="scalar", int8=True)
    for isa in INT8_ISAS:
        assert np.array_equal(K.gemm(w, x, isa=isa, int8=True), ref8)


def int8_error_bound(w: K.PackedMatrix, x: np.ndarray) -> np.ndarray:
    """Per-row bound of the int8 prefill path for one token (see the module docstring)."""
    codes, scales, _ = w.unpack()
    g = w.group_size
    ng = scales.shape[1]
    xp = np.zeros(ng * g)
    xp[: w.k] = x
    xscale = np.abs(xp.reshape(ng, g)).max(axis=1) / 127.0
    dev = np.zeros((w.n, ng * g))
    dev[:, : w.k] = np.abs(codes - K.CENTER[w.qtype])
    per_group = dev.reshape(w.n, ng, g).sum(axis=2) * 0.5 * xscale[None, :]
    return (np.abs(scales) * per_group).sum(axis=1)


INT8_ISAS = [i for i in K.int8_isas() if i != "scalar"]


@pytest.mark.parametrize("qtype", K.QTYPES)
@pytest.mark.parametrize("group", K.GROUP_SIZES)
@pytest.mark.parametrize("asym", [False, True])
@pytest.mark.parametrize("shape", [(1, 4), (65, 33), (192, 576)])
def test_int8_prefill_exact_to_its_reference_and_within_bound(
    rng: np.random.Generator, qtype: str, group: int, asym: bool, shape: tuple[int, int]
) -> None:
    n, k = shape
    w, w64 = make_matrix(rng, n, k, qtype, group, asym)
    for m in (1, 3, 9):
        x = rng.standard_normal((m, k)).astype(np.float32)
        ref = K.gemm(w, x, isa="scalar", int8=True, n_threads=1)
        for i in range(m):
            exact = w64 @ x[i].astype(np.float64)
            bound = int8_error_bound(w, x[i]) + FLOAT_SLACK * abs_terms(w, x[i]) + 1e-30
            assert np.all(np.abs(ref[i] - exact) <= bound)
        for isa in INT8_ISAS:
            assert np.array_equal(K.gemm(w, x, isa=isa, int8=True, n_threads=2), ref), isa


@pytest.mark.parametrize("qtype", ["q2", "q4", "tq"])
def test_int8_error_bound_is_tight_on_average(rng: np.random.Generator, qtype: str) -> None:
    w, w64 = make_matrix(rng, 256, 1024, qtype, 32, False)
    x = rng.standard_normal(1024).astype(np.float32)
    err = np.abs(K.gemm(w, x[None, :], int8=True, isa="scalar")[0] - w64 @ x.astype(np.float64))
    ratio = err.mean() / int8_error_bound(w, x).mean()
    assert 1e-3 < ratio < 0.2, ratio


def test_int8_request_takes_the_int8_kernel_or_falls_back_to_lut(rng: np.random.Generator) -> None:
    w, _ = make_matrix(rng, 70, 100, "q4", 32, False)
    x = rng.standard_normal((4, 100)).astype(np.float32)
    lut, int8 = K.gemm(w, x, isa="scalar"), K.gemm(w, x, isa="scalar", int8=True)
    assert not np.array_equal(lut, int8)  # the paths round differently, so the checks tell them apart
    for isa in SIMD_ISAS:
        expected = int8 if isa in INT8_ISAS else lut
        assert np.array_equal(K.gemm(w, x, isa=isa, int8=True), expected), isa
    # Every x86 kernel set has an int8 kernel (AVX2 since session 8); NEON falls back to LUT.
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert set(SIMD_ISAS) <= set(INT8_ISAS)


@pytest.mark.parametrize("isa", INT8_ISAS)
@pytest.mark.parametrize("m", [2, 128])
def test_int8_prefill_576x1536(rng: np.random.Generator, isa: str, m: int) -> None:
    w, _ = make_matrix(rng, 576, 1536, "q4", 32, True)
    x = rng.standard_normal((m, 1536)).astype(np.float32)
    x[:, 5] = 1e4  # an outlier column coarsens the int8 steps but stays within the bound
    assert np.array_equal(K.gemm(w, x, isa=isa, int8=True), K.gemm(w, x, isa="scalar", int8=True))


@pytest.mark.parametrize("qtype", K.QTYPES)
@pytest.mark.parametrize("group", K.GROUP_SIZES)
def test_int8_prefill_exact_at_the_int16_extremes(qtype: str, group: int) -> None:
    # Every weight at its extreme level and every activation at +-amax: xu = 255
    # or 1 everywhere, the largest partial sums the SIMD kernels form in int16
    # (AVX2: 4 chunks of vpmaddubsw pairs, 4 * 2 * 255 * 15 = 30600 for q4).
    lo, hi = K.CODE_RANGE[qtype]
    n, k = 130, 3 * group + 8  # a partial last tile and a last group past K
    codes = np.where(np.arange(n)[:, None] % 2 == 0, hi, lo) * np.ones((1, k), np.int64)
    scales = np.full((n, -(-k // group)), 0.01, np.float32)
    w = K.pack(codes, scales, None, qtype, group)
    x = np.stack([np.full(k, 3.0), np.full(k, -3.0), np.where(np.arange(k) % 2 == 0, 3.0, -3.0)]).astype(
        np.float32
    )
    ref = K.gemm(w, x, isa="scalar", int8=True)
    exact = (w.dequantize().astype(np.float64) @ x.T.astype(np.float64)).T
    assert np.allclose(ref, exact, rtol=1e-5, atol=1e-4)
    for isa in INT8_ISAS:
        assert np.array_equal(K.gemm(w, x, isa=isa, int8=True), ref), isa


@pytest.mark.parametrize("isa", INT8_ISAS)
def test_int8_prefill_many_tokens_any_thread_split(rng: np.random.Generator, isa: str) -> None:
    # 5 tiles (the last one partial) split over 1-3 threads, 70 tokens, K with a tail group.
    w, _ = make_matrix(rng, 300, 1000, "q3", 64, True)
    x = rng.standard_normal((70, 1000)).astype(np.float32)
    ref = K.gemm(w, x, isa="scalar", int8=True, n_threads=1)
    for threads in (1, 2, 3):
        assert np.array_equal(K.gemm(w, x, isa=isa, int8=True, n_threads=threads), ref), threads


@pytest.mark.parametrize("qtype", K.QTYPES)
@pytest.mark.parametrize("asym", [False, True])
def test_pack_unpack_round_trip(rng: np.random.Generator, qtype: str, asym: bool) -> None:
    lo, hi = K.CODE_RANGE[qtype]
    codes = rng.integers(lo, hi + 1, size=(70, 150)).astype(np.int8)
    scales = rng.standard_normal((70, 3)).astype(np.float32)
    mins = rng.standard_normal((70, 3)).astype(np.float32) if asym else None
    w = K.pack(codes, scales, mins, qtype, 64)
    c2, s2, m2 = w.unpack()
    assert np.array_equal(c2, codes)
    assert np.array_equal(s2, scales.astype(np.float16).astype(np.float32))
    if asym:
        assert np.array_equal(m2, mins.astype(np.float16).astype(np.float32))
    else:
        assert m2 is None
    expect = K.dequantize_reference(c2, s2, m2, qtype, 64)
    np.testing.assert_allclose(w.dequantize(), expect, rtol=1e-6, atol=1e-6)
    assert (w.n, w.k, w.qtype, w.group_size, w.asym) == (70, 150, qtype, 64, asym)


@pytest.fixture
def small_w(rng: np.random.Generator) -> K.PackedMatrix:
    return make_matrix(rng, 10, 40, "q2", 32, False)[0]


def test_error_bad_dtype(small_w: K.PackedMatrix) -> None:
    with pytest.raises(TypeError, match="x must be a float array, got dtype int64"):
        K.gemv(small_w, np.ones(40, dtype=np.int64))


def test_error_bad_shapes(small_w: K.PackedMatrix) -> None:
    with pytest.raises(ValueError, match="has 39 features but the matrix expects 40"):
        K.gemm(small_w, np.ones((2, 39), np.float32))
    with pytest.raises(ValueError, match="gemv takes a vector x of shape"):
        K.gemv(small_w, np.ones((1, 40), np.float32))
    with pytest.raises(ValueError, match="gemm takes x of shape"):
        K.gemm(small_w, np.ones(40, np.float32))
    with pytest.raises(ValueError, match="x has no rows"):
        K.gemm(small_w, np.ones((0, 40), np.float32))
    with pytest.raises(ValueError, match="NaN or infinity"):
        K.gemv(small_w, np.full(40, np.nan, np.float32))


def test_error_bad_qtype_group_codes_scales() -> None:
    codes = np.zeros((4, 32), np.int8)
    scales = np.ones((4, 1), np.float32)
    with pytest.raises(ValueError, match="unknown weight type 'q5'"):
        K.pack(codes, scales, None, "q5", 32)
    with pytest.raises(ValueError, match="group_size must be 32, 64 or 128, got 48"):
        K.pack(codes, scales, None, "q4", 48)
    with pytest.raises(ValueError, match=r"codes for q2 must lie in \[0, 3\]"):
        K.pack(codes + 4, scales, None, "q2", 32)
    with pytest.raises(ValueError, match=r"codes for tq must lie in \[-1, 1\]"):
        K.pack(codes - 2, scales, None, "tq", 32)
    with pytest.raises(ValueError, match=r"scales must have shape \(4, 1\)"):
        K.pack(codes, np.ones((4, 2), np.float32), None, "q4", 32)
    with pytest.raises(ValueError, match="codes must be 2-D"):
        K.pack(np.zeros(32, np.int8), scales, None, "q4", 32)


def test_error_unknown_isa(small_w: K.PackedMatrix) -> None:
    with pytest.raises(ValueError, match="unknown ISA 'sse9'"):
        K.gemv(small_w, np.ones(40, np.float32), isa="sse9")


def test_scalar_and_best_isa_listed() -> None:
    assert ISAS[0] == "scalar"
    assert K.cpu_isa() in ISAS


@pytest.mark.parametrize("n_threads", [2, 3, 7])
def test_any_thread_count_gives_the_same_bits(rng: np.random.Generator, n_threads: int) -> None:
    # The pool hands a job's chunks to whichever threads run, in any order and
    # with more threads than cores; each output row is still computed whole by
    # one thread, so the result never depends on the split.
    w, _ = make_matrix(rng, 333, 200, "q4", 32, True)
    for m in (1, 5, 64):
        x = rng.standard_normal((m, 200)).astype(np.float32)
        want = K.gemm(w, x, n_threads=1)
        for _ in range(3):
            assert np.array_equal(K.gemm(w, x, n_threads=n_threads), want)
