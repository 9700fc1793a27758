"""Two-level scales (4-bit sub-scales and sub-mins under fp16 super-block values).

Oracles, as for the one-level format (tests/test_kernels.py):

* numpy: the stored bytes dequantise to ``(d * ls) * code + dmin * lm`` per
  group, computed in float32 exactly as the kernels form scale and offset;
* the scalar reference kernel: every ISA's LUT kernel and the int8 prefill
  kernel match it bit for bit, and it stays within the table bound of a
  float64 matmul of the dequantised weights.

The C++ kernel_check (tests/test_cross_aarch64.py) runs the same comparisons
natively and under qemu for NEON, with two-level scales among its cases.
"""

from __future__ import annotations

import numpy as np
import pytest
from mfile_helpers import tiny_model

from edgelut import _core
from edgelut import kernels as K
from edgelut.quantize.convert import quantize_tensor
from edgelut.quantize.gptq import hessian, quantize_gptq_two_level
from edgelut.quantize.recipe import Recipe, TensorSpec, parse_overrides
from edgelut.quantize.rtn import quantize_rtn
from edgelut.quantize.twolevel import quantize_two_level

ISAS = K.supported_isas()
SIMD_ISAS = [i for i in ISAS if i != "scalar"]


def random_two_level(
    rng: np.random.Generator, n: int, k: int, qtype: str, group: int = 32, sb: int = 256
) -> tuple[K.PackedMatrix, tuple[np.ndarray, ...]]:
    lo, hi = K.CODE_RANGE[qtype]
    ng = -(-k // group)
    nsb = -(-ng // (sb // group))
    codes = rng.integers(lo, hi + 1, size=(n, k))
    ls = rng.integers(0, 16, size=(n, ng))
    lm = rng.integers(0, 16, size=(n, ng))
    d = (rng.uniform(0.001, 0.01, size=(n, nsb)) * rng.choice([-1, 1], size=(n, nsb))).astype(np.float32)
    dmin = (rng.standard_normal((n, nsb)) * 0.01).astype(np.float32)
    w = K.pack_two_level(codes, ls, lm, d, dmin, qtype, group, sb)
    return w, (codes, ls, lm, d, dmin)


def numpy_dequant(codes, ls, lm, d, dmin, group: int, sb: int) -> np.ndarray:
    scales, mins = K.two_level_group_scales(ls, lm, d, dmin, group, sb)
    k = codes.shape[1]
    srep = np.repeat(scales, group, axis=1)[:, :k]
    mrep = np.repeat(mins, group, axis=1)[:, :k]
    return srep * codes.astype(np.float32) + mrep


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(515)


@pytest.mark.parametrize("qtype", ["q1", "q2", "q3", "q4"])
@pytest.mark.parametrize(("n", "k", "group"), [(64, 256, 32), (70, 576, 32), (65, 200, 64), (3, 1000, 128)])
def test_pack_matches_numpy_dequantisation(rng, qtype: str, n: int, k: int, group: int) -> None:
    # 576 (SmolLM2's width) and 200 are not multiples of 256: the last super-block is partial.
    w, (codes, ls, lm, d, dmin) = random_two_level(rng, n, k, qtype, group)
    assert w.super_block == 256 and w.asym
    ref = numpy_dequant(codes, ls, lm, d, dmin, group, 256)
    assert np.array_equal(w.dequantize(), ref)
    back_ls, back_lm, back_d, back_dmin = w.unpack_two_level()
    assert np.array_equal(back_ls, ls) and np.array_equal(back_lm, lm)
    assert np.array_equal(back_d, d.astype(np.float16).astype(np.float32))
    assert np.array_equal(back_dmin, dmin.astype(np.float16).astype(np.float32))
    back_codes, scales, mins = w.unpack()
    assert np.array_equal(back_codes, codes)
    assert (scales, mins) is not None
    exp_s, exp_m = K.two_level_group_scales(ls, lm, d, dmin, group, 256)
    assert np.array_equal(scales, exp_s) and np.array_equal(mins, exp_m)


def test_bits_per_weight_and_size(rng) -> None:
    w, _ = random_two_level(rng, 64, 512, "q2")
    # 2 code bits + 8 bits per group of 32 + 32 bits per super-block of 256.
    assert w.bits_per_weight == pytest.approx(2 + 8 / 32 + 32 / 256)
    one = K.pack(np.zeros((64, 512)), np.ones((64, 16)), np.zeros((64, 16)), "q2", 32)
    assert one.bits_per_weight == pytest.approx(3.0)
    assert w.nbytes < one.nbytes


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("qtype", ["q2", "q3", "q4"])
@pytest.mark.parametrize(("n", "k", "m"), [(64, 256, 1), (130, 576, 3), (70, 200, 5), (64, 1536, 9)])
def test_simd_bit_exact_to_scalar(rng, isa: str, qtype: str, n: int, k: int, m: int) -> None:
    w, (codes, ls, lm, d, dmin) = random_two_level(rng, n, k, qtype)
    x = rng.standard_normal((m, k)).astype(np.float32)
    ref = K.gemm(w, x, isa="scalar") if m > 1 else K.gemv(w, x[0], isa="scalar")[None, :]
    got = K.gemm(w, x, isa=isa) if m > 1 else K.gemv(w, x[0], isa=isa)[None, :]
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("qtype", ["q2", "q3"])
def test_scalar_within_table_bound_of_float64(rng, qtype: str) -> None:
    w, (codes, ls, lm, d, dmin) = random_two_level(rng, 70, 576, qtype)
    w64 = numpy_dequant(codes, ls, lm, d, dmin, 32, 256).astype(np.float64)
    x = rng.standard_normal(576).astype(np.float32)
    y = K.gemv(w, x, isa="scalar")
    exact = w64 @ x.astype(np.float64)
    _, scales, mins = w.unpack()
    mag = np.abs(np.repeat(scales, 32, axis=1)) * 16 + np.abs(np.repeat(mins, 32, axis=1))
    bound = K.table_error_bound(w, x) + 2e-5 * (mag.astype(np.float64) @ np.abs(x.astype(np.float64))) + 1e-30
    assert np.all(np.abs(y - exact) <= bound)


@pytest.mark.parametrize(
    ("qtype", "group", "sb", "expected"),
    [
        ("q4", 32, 256, True),
        ("q4", 64, 256, False),  # 127 * 16 chunks * (15 + 15) > 32767
        ("q3", 64, 256, True),
        ("q3", 128, 256, False),
        ("q2", 128, 256, True),
        ("q1", 128, 512, True),
        ("q3", 32, 1088, True),  # 34 groups: the int32 sums stay below 2^24
        ("q3", 32, 1120, False),
    ],
)
def test_which_shapes_take_the_integer_sub_scale_path(
    rng, qtype: str, group: int, sb: int, expected: bool
) -> None:
    w, _ = random_two_level(rng, 64, sb, qtype, group, sb)
    assert w.int_subscales is expected
    assert K.pack(np.zeros((64, 256)), np.ones((64, 256 // group)), None, qtype, group).int_subscales is False


def chunk_l1_max(x: np.ndarray, lo: int, hi: int) -> float:
    seg = np.zeros(hi - lo, np.float32)
    part = x[lo : min(hi, x.size)]
    seg[: part.size] = part
    return float(np.abs(seg.reshape(-1, 4)).sum(axis=1).max())


@pytest.mark.parametrize("isa", ISAS)
def test_super_block_shares_one_table_scale(rng, isa: str) -> None:
    # 352 = one full super-block of 256 and a partial one of 3 groups.
    w, _ = random_two_level(rng, 64, 352, "q3")
    x = rng.standard_normal(352).astype(np.float32)
    x[300] = 40.0  # an outlier in the partial block sets its scale alone
    _, tscale, asum = K.tables(w, x, isa="" if isa == "scalar" else isa)
    for lo, hi in [(0, 256), (256, 352)]:
        got = tscale[lo // 32 : -(-hi // 32)]
        assert np.all(got == got[0])
        assert got[0] == pytest.approx(chunk_l1_max(x, lo, hi) / 127, rel=1e-6)
    assert tscale[0] < tscale[-1] / 4
    assert np.allclose(asum, x.reshape(-1, 32).sum(axis=1), atol=1e-4)


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize(
    ("qtype", "group", "k"),
    [("q1", 32, 352), ("q2", 128, 1000), ("q3", 64, 200), ("q3", 32, 352), ("q4", 32, 2336), ("q4", 64, 576)],
)
@pytest.mark.parametrize("m", [1, 2, 5])
def test_integer_path_bit_exact_to_scalar(rng, isa: str, qtype: str, group: int, k: int, m: int) -> None:
    # Odd group counts in the last super-block (352 at g32: 8 + 3), a group past
    # K (200, 1000), nine super-blocks (2336), and q4 g64 on the float path.
    w, _ = random_two_level(rng, 130, k, qtype, group)
    assert w.int_subscales is not (qtype == "q4" and group == 64)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[:, ::37] *= 30.0  # outliers: super-block scales far above some groups'
    ref = K.gemm(w, x, isa="scalar") if m > 1 else K.gemv(w, x[0], isa="scalar")[None, :]
    got = K.gemm(w, x, isa=isa) if m > 1 else K.gemv(w, x[0], isa=isa)[None, :]
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("qtype", ["q1", "q2", "q3", "q4"])
def test_integer_path_within_its_bound_and_the_bound_is_needed(rng, qtype: str) -> None:
    w, (codes, ls, lm, d, dmin) = random_two_level(rng, 70, 576, qtype)
    assert w.int_subscales
    w64 = numpy_dequant(codes, ls, lm, d, dmin, 32, 256).astype(np.float64)
    _, scales, mins = w.unpack()
    mag = np.abs(np.repeat(scales, 32, axis=1)) * 16 + np.abs(np.repeat(mins, 32, axis=1))
    worst = 0.0
    for _ in range(5):
        x = rng.standard_normal(576).astype(np.float32)
        y = K.gemv(w, x, isa="scalar")
        err = np.abs(y - w64 @ x.astype(np.float64))
        slack = 2e-5 * (mag.astype(np.float64) @ np.abs(x.astype(np.float64))) + 1e-30
        bound = K.table_error_bound(w, x)
        assert np.all(err <= bound + slack)
        worst = max(worst, float(np.max(err / bound)))
    # The bound is not vacuous: errors reach a visible fraction of it.
    assert worst > 0.02


@pytest.mark.parametrize("isa", [i for i in K.int8_isas() if i != "scalar"])
@pytest.mark.parametrize("qtype", ["q1", "q2", "q3", "q4"])
@pytest.mark.parametrize(("n", "k", "group", "m"), [(130, 576, 32, 20), (70, 200, 64, 3), (65, 1000, 128, 9)])
def test_int8_simd_exact_to_its_reference(
    rng, isa: str, qtype: str, n: int, k: int, group: int, m: int
) -> None:
    # 576 ends in a partial super-block, 200 and 1000 in a group past K.
    w, _ = random_two_level(rng, n, k, qtype, group)
    x = rng.standard_normal((m, k)).astype(np.float32)
    ref = K.gemm(w, x, isa="scalar", int8=True)
    assert np.array_equal(K.gemm(w, x, isa=isa, int8=True), ref)


def test_int8_prefill_close_to_the_lut_path(rng) -> None:
    w, _ = random_two_level(rng, 130, 576, "q2")
    x = rng.standard_normal((20, 576)).astype(np.float32)
    ref = K.gemm(w, x, isa="scalar", int8=True)
    # Different rounding than the LUT path, but close to it.
    lut = K.gemm(w, x, isa="scalar")
    assert np.max(np.abs(ref - lut)) < 0.05 * np.max(np.abs(lut))


def test_pack_errors(rng) -> None:
    codes = np.zeros((4, 64), np.int8)
    ls = np.zeros((4, 2), np.uint8)
    d = np.ones((4, 1), np.float32)
    with pytest.raises(ValueError, match=r"sub_scales must lie in \[0, 15\]"):
        K.pack_two_level(codes, ls + 16, ls, d, d, "q2", 32, 256)
    with pytest.raises(ValueError, match="super_block must be a positive multiple"):
        K.pack_two_level(codes, ls, ls, d, d, "q2", 32, 48)
    with pytest.raises(ValueError, match=r"d and dmin must have shape \(4, 1\)"):
        K.pack_two_level(codes, ls, ls, np.ones((4, 2)), d, "q2", 32, 256)
    with pytest.raises(ValueError, match=r"sub-scales and sub-mins must have shape \(4, 2\)"):
        K.pack_two_level(codes, ls[:, :1], ls, d, d, "q2", 32, 256)
    with pytest.raises(ValueError, match="two-level scales need asymmetric"):
        K.from_buffer(np.zeros(1 << 14, np.uint8), 4, 64, "q2", 32, False, 256)
    one = K.pack(codes, np.ones((4, 2)), None, "q2", 32)
    with pytest.raises(ValueError, match="one-level scales"):
        one.unpack_two_level()


def laplace_weights(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    # Heavy tails and per-row / per-column magnitudes, like real projections.
    w = rng.laplace(size=(n, k)) * rng.uniform(0.5, 2.0, size=(n, 1)) * rng.uniform(0.2, 1.5, size=(1, k))
    return (0.02 * w).astype(np.float32)


@pytest.mark.parametrize("qtype", ["q2", "q3"])
def test_quantiser_close_to_one_level(rng, qtype: str) -> None:
    w = laplace_weights(rng, 128, 576)
    tl = quantize_two_level(w, qtype, 32)
    rec = tl.pack().dequantize()
    err2 = float(np.mean((rec - w) ** 2))
    codes, scales, mins = quantize_rtn(w, qtype, 32, asym=True)
    err1 = float(np.mean((K.pack(codes, scales, mins, qtype, 32).dequantize() - w) ** 2))
    # The search keeps most of one-level's accuracy at 0.375 instead of 1.0 bits of scales.
    assert err2 < 1.25 * err1
    # And beats plain rounding of each group's scale to the 4-bit grid (no search, no refit).
    scales_f, mins_f = scales.reshape(128, -1), mins.reshape(128, -1)
    naive = []
    for b in range(0, scales_f.shape[1], 8):
        s, m = scales_f[:, b : b + 8], mins_f[:, b : b + 8]
        dd = s.max(axis=1, keepdims=True) / 15
        dm = m.min(axis=1, keepdims=True) / 15
        naive.append((np.rint(s / dd).clip(0, 15) * dd, np.rint(m / dm).clip(0, 15) * dm))
    ns = np.concatenate([a for a, _ in naive], axis=1)
    nm = np.concatenate([b for _, b in naive], axis=1)
    q = np.clip(
        np.rint((w - np.repeat(nm, 32, axis=1)) / np.repeat(ns, 32, axis=1)), 0, K.CODE_RANGE[qtype][1]
    )
    naive_err = float(np.mean((np.repeat(ns, 32, axis=1) * q + np.repeat(nm, 32, axis=1) - w) ** 2))
    assert err2 < naive_err


def test_quantiser_refuses_ternary_and_bad_super_block(rng) -> None:
    w = laplace_weights(rng, 4, 64)
    with pytest.raises(ValueError, match="q1..q4"):
        quantize_two_level(w, "tq", 32)
    with pytest.raises(ValueError, match="multiple of the group size"):
        quantize_two_level(w, "q2", 32, 100)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_two_level_beats_rtn_on_output_error(rng, act_order: bool) -> None:
    k = 256
    w = laplace_weights(rng, 64, k)
    # Strongly correlated inputs with uneven feature scales (as real activations): where GPTQ
    # and act-order help.
    x = rng.standard_normal((2048, 24)) @ rng.standard_normal((24, k)) + 0.1 * rng.standard_normal((2048, k))
    x *= rng.uniform(0.1, 3.0, size=k)
    h = hessian(x)
    tl = quantize_gptq_two_level(w, h, "q2", 32, 256, act_order=act_order)
    rtn = quantize_two_level(w, "q2", 32, importance=np.diag(h))

    def out_err(m: K.PackedMatrix) -> float:
        return float(np.mean(((m.dequantize() - w) @ x.T) ** 2))

    assert out_err(tl.pack()) < 0.9 * out_err(rtn.pack())


def test_recipe_defaults_and_specs() -> None:
    r = Recipe(qtype="q2")
    assert r.super_block == 256
    assert str(r.spec_for("blk.0.attn_q.weight")) == "q2:g32:asym:k256"
    assert str(r.spec_for("blk.0.ffn_down.weight")) == "q4:g32:asym:k256"  # the q2 default override
    assert Recipe(qtype="q4").super_block == 0
    assert Recipe(qtype="q3", super_block=0).spec_for("blk.0.attn_q.weight").super_block == 0
    r = Recipe(qtype="q4", overrides=parse_overrides("attn_q=q2:k,ffn_up=q3:k512,attn_k=q2:flat"))
    assert r.spec_for("blk.1.attn_q.weight") == TensorSpec("q2", 32, True, 256)
    assert r.spec_for("blk.1.ffn_up.weight").super_block == 512
    assert r.spec_for("blk.1.attn_k.weight").super_block == 0
    with pytest.raises(ValueError, match="two-level scales need asymmetric"):
        parse_overrides("attn_q=q2:sym:k")
    with pytest.raises(ValueError, match="the super-block must be a multiple of g"):
        parse_overrides("attn_q=q2:k100")
    with pytest.raises(ValueError, match="super-block 256 needs asymmetric"):
        Recipe(qtype="q2", asym=False, super_block=256)


def test_quantize_tensor_row_blocks_equal_whole(rng) -> None:
    from edgelut.quantize import convert

    w = laplace_weights(rng, 200, 576)
    spec = TensorSpec("q3", 32, True, 256)
    whole = quantize_tensor("blk.0.attn_q.weight", w, spec, "rtn")
    parts = [quantize_tensor("blk.0.attn_q.weight", w[a : a + 64], spec, "rtn") for a in range(0, 200, 64)]
    joined = convert.join_row_blocks(parts, 200, 576)
    assert joined.super_block == 256
    assert np.array_equal(np.asarray(joined.data), np.asarray(whole.data))


def two_level_tensors(m, qtype: str = "q3") -> dict:
    spec = TensorSpec(qtype, 32, True, 256)
    out = {}
    for name, t in m.tensors.items():
        t = np.asarray(t, np.float32)
        if name == "output.weight" and m.config.tie_embeddings:
            continue
        out[name] = quantize_tensor(name, t, spec, "rtn") if t.ndim == 2 else t
    return out


def test_model_file_round_trip_and_paged_engine(tmp_path) -> None:
    from edgelut.models.modelfile import read_model_file, write_model_file

    m = tiny_model(layers=3, hidden=128, inter=192, vocab=200, tie=True, seed=9)
    packed = two_level_tensors(m)
    path = write_model_file(tmp_path / "tl.elut", m.config, m.tokenizer, packed)
    with read_model_file(path) as f:
        e = f.entries["blk.0.ffn_down.weight"]
        assert e.super_block == 256 and e.asym
        back = f.tensor("blk.0.ffn_down.weight")
        assert back.super_block == 256
        assert np.array_equal(back.dequantize(), packed["blk.0.ffn_down.weight"].dequantize())
    prompt = np.asarray([1, 150, 9, 199, 64, 7, 128], np.int32)
    resident = _core.Engine.from_file(str(path), n_ctx=32, n_threads=1)
    ref = resident.eval(prompt, 0, all_logits=True)
    assert np.all(np.isfinite(ref))
    # Paging the layers, the lm_head and the embedding rows reads the two-level sections per tile.
    paged = _core.Engine.from_file(
        str(path), n_ctx=32, n_threads=1, window=1, drop_cache=True, page_output=True, prefill_chunk=3
    )
    assert np.array_equal(paged.eval(prompt, 0, all_logits=True), ref)


def test_engine_mixes_integer_and_float_paths_on_one_input(tmp_path) -> None:
    # q3 g64 takes the integer sub-scale path (one table scale per 256) and q4 g64 the
    # float one (per group), so q/k and v cannot share one set of tables even though
    # K and the group size agree: the engine must build both (lut_ops.cc).
    from types import SimpleNamespace

    from edgelut.models.modelfile import write_model_file
    from edgelut.models.reference import forward

    m = tiny_model(layers=2, hidden=256, inter=256, vocab=200, tie=True, seed=4)
    # The first matrix of each fused input (q, gate) on the float path: its tables, if
    # shared, would be per group where k, v and up read one scale per super-block.
    specs = {"attn_q": TensorSpec("q4", 64, True, 256), "ffn_gate": TensorSpec("q4", 64, True, 256)}
    packed, deq = {}, {}
    for name, t in m.tensors.items():
        t = np.asarray(t, np.float32)
        if t.ndim != 2 or (name == "output.weight" and m.config.tie_embeddings):
            packed[name] = deq[name] = t
            continue
        spec = next((v for k, v in specs.items() if k in name), TensorSpec("q3", 64, True, 256))
        packed[name] = quantize_tensor(name, t, spec, "rtn")
        deq[name] = packed[name].dequantize()
    assert packed["blk.0.attn_v.weight"].int_subscales and not packed["blk.0.attn_q.weight"].int_subscales
    path = write_model_file(tmp_path / "mixed.elut", m.config, m.tokenizer, packed)
    prompt = np.asarray([1, 150, 9, 199, 64, 7, 128, 3], np.int32)
    engine = _core.Engine.from_file(str(path), n_ctx=32, n_threads=2)
    # One token at a time: decode takes the LUT kernels (a prompt this long takes int8).
    got = np.stack([engine.eval(prompt[i : i + 1], i, all_logits=True)[-1] for i in range(prompt.size)])
    ref = forward(SimpleNamespace(config=m.config, tensors=deq), prompt.astype(np.int64))
    # Only the int8 tables separate the two (2.7% of the largest logit); with the float
    # path's tables shared into k, v and up it measured 29-34%.
    assert np.max(np.abs(got - ref)) < 0.08 * np.max(np.abs(ref))


def test_model_file_with_bad_super_block_is_refused(tmp_path) -> None:
    from edgelut.models.modelfile import ModelFileError, read_model_file, write_model_file

    m = tiny_model(layers=1, hidden=128, inter=192, seed=2)
    packed = two_level_tensors(m, "q2")
    path = write_model_file(tmp_path / "tl.elut", m.config, m.tokenizer, packed)
    raw = bytearray(path.read_bytes())
    key = b"edgelut.tensor.blk.0.attn_q.weight.super"
    at = raw.index(key) + len(key)
    # The GGUF value after the key: type (u32) then the uint32 value.
    assert int.from_bytes(raw[at : at + 4], "little") == 4
    raw[at + 4 : at + 8] = (100).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises((ModelFileError, ValueError), match="super-block must be a multiple"):
        read_model_file(path)
