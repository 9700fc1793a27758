"""Speed paths that must not change results: the SIMD table builders, the
shared-table multi-weight matmul the engine uses for q/k/v and gate/up, and the
run-time choice between the LUT and the int8 prefill kernels.

- Every ISA's build_tables is bit-identical to the scalar reference
  (csrc/kernels/lut_ref.cc), including ties, zeros, huge values and a last
  group that runs past K.
- The engine on either forced path ("lut", "int8") and on "auto" stays within
  the documented engine error bound against the numpy forward (LOGIT_RTOL of
  tests/test_engine.py; the kernel bounds are in csrc/kernels/lut.h).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_engine import IDS, assert_close_to_reference, build, reference_logits, tiny  # noqa: F401

from edgelut import kernels as K

SIMD_ISAS = [i for i in K.supported_isas() if i != "scalar"]
LEVELS = {"q1": (0, 1), "q2": (0, 3), "q3": (0, 7), "q4": (0, 15), "tq": (-1, 1)}


def packed(rng: np.random.Generator, n: int, k: int, qtype: str, group: int) -> K.PackedMatrix:
    lo, hi = LEVELS[qtype]
    ng = -(-k // group)
    codes = rng.integers(lo, hi + 1, size=(n, k))
    scales = rng.random((n, ng)).astype(np.float32) + 0.1
    mins = None if qtype == "tq" else rng.standard_normal((n, ng)).astype(np.float32)
    return K.pack(codes, scales, mins, qtype, group)


def activations(rng: np.random.Generator, k: int, kind: str) -> np.ndarray:
    x = rng.standard_normal(k).astype(np.float32)
    if kind == "zeros":
        return np.zeros(k, np.float32)
    if kind == "sparse":
        x[rng.random(k) < 0.7] = 0.0
    if kind == "ties":  # quarter steps make many table entries land on .5 exactly
        x = np.round(x * 4) / 4
    if kind == "huge":
        x *= 1e30
    if kind == "tiny":
        x *= 1e-30
    if kind == "outlier":
        x[k // 3] = 1e4
    return x.astype(np.float32)


@pytest.mark.skipif(not SIMD_ISAS, reason="this CPU has no SIMD kernel ISA")
@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize(
    "k,group", [(576, 32), (576, 64), (896, 128), (1536, 64), (4864, 128), (100, 32), (70, 64), (3, 32)]
)
@pytest.mark.parametrize("kind", ["normal", "zeros", "sparse", "ties", "huge", "tiny", "outlier"])
def test_simd_tables_bit_identical_to_reference(isa: str, k: int, group: int, kind: str) -> None:
    rng = np.random.default_rng(k * 31 + group)
    w = packed(rng, 64, k, "q4", group)
    x = activations(rng, k, kind)
    ref = K.tables(w, x)
    got = K.tables(w, x, isa=isa)
    for name, r, g in zip(("tables", "tscale", "asum"), ref, got, strict=True):
        assert r.shape == g.shape
        # Compare bits, not values: -0.0 vs 0.0 or a NaN would hide otherwise.
        assert np.array_equal(r.view(np.uint8), g.view(np.uint8)), f"{isa} {name} differ from the reference"


@pytest.mark.parametrize("isa", ["scalar", *SIMD_ISAS])
def test_lut_gemm_unchanged_by_table_builder(isa: str) -> None:
    # The SIMD GEMM (SIMD tables) equals the scalar GEMM (reference tables) bit for bit.
    rng = np.random.default_rng(5)
    w = packed(rng, 130, 576, "q2", 64)
    x = rng.standard_normal((3, 576)).astype(np.float32)
    assert np.array_equal(K.gemm(w, x, isa=isa, n_threads=1), K.gemm(w, x, isa="scalar", n_threads=1))


@pytest.mark.parametrize("path", ["auto", "lut", "int8"])
def test_engine_paths_within_error_bound(tiny, path: str) -> None:  # noqa: F811
    cfg, tensors, W = tiny
    e = build(cfg, tensors).engine
    e.matmul_path = path
    assert e.matmul_path == path
    got = e.eval(np.array(IDS, np.int32), 0, all_logits=True)
    assert_close_to_reference(got, reference_logits(cfg, W, IDS))


def test_auto_equals_forced_path_per_call(tiny) -> None:  # noqa: F811
    # 13 tokens in one chunk take the int8 kernels under "auto" (q4: m >= 8), a
    # single decode token the LUT GEMV; each equals the forced path exactly.
    cfg, tensors, _ = tiny
    ids = np.array(IDS, np.int32)
    out = {}
    for path in ("auto", "lut", "int8"):
        e = build(cfg, tensors).engine
        e.matmul_path = path
        prompt = e.eval(ids, 0, all_logits=True)
        if path == "int8":
            e.matmul_path = "lut"  # decode on the LUT GEMV after an int8 prefill
        out[path] = (prompt, e.eval(ids[:1], len(IDS)))
    assert np.array_equal(out["auto"][0], out["int8"][0])
    if K.cpu_isa() in K.int8_isas():
        assert not np.array_equal(out["lut"][0], out["int8"][0])  # the paths really differ
    else:  # no int8 kernel for this CPU (NEON): "int8" runs the LUT kernels
        assert np.array_equal(out["lut"][0], out["int8"][0])
    assert np.array_equal(out["auto"][1], out["int8"][1])


def test_bad_matmul_path_is_a_clear_error(tiny) -> None:  # noqa: F811
    cfg, tensors, _ = tiny
    e = build(cfg, tensors).engine
    with pytest.raises(ValueError, match="matmul path must be 'auto', 'lut' or 'int8'"):
        e.matmul_path = "fast"
