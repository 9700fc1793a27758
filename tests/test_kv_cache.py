"""The KV cache types (f32, f16, q8) and the sliding context option.

q8 keeps int8 keys and values with one scale per 32 values (per head when
head_dim is smaller); these tests bound how far its logits move from the f32
cache, on the tiny random models and on the real SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from test_engine import (
    IDS,
    CharTokenizer,
    assert_close_to_reference,
    build,
    dequantised,
    random_tensors,
    reference_logits,
    tiny_config,
)

import edgelut
from edgelut import Model, _core, cache
from edgelut.model import engine_config, pack_tensors

# Largest q8-vs-f32 logit difference, as a fraction of the f32 logit range.
# On the tiny random models most of it is not the cache: any change of K/V
# moves the int8 activation rounding of the LUT matmuls after attention; the
# f16 cache moves them as far (measured: f16 0.7-1.8%, q8 0.9-2.2%), so the
# bound is the engine-vs-numpy tolerance of test_engine (3.5%).
Q8_RTOL_TINY = 0.035
Q8_RTOL_REAL = 0.09  # SmolLM2: see test_smollm2_q8_logits_close_to_f32

KINDS = ["llama", "qwen2", "adjacent", "freq_factors"]


def rel_diff(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("kind", KINDS)
def test_q8_logits_close_to_f32_cache(kind: str) -> None:
    cfg = tiny_config(kind)
    t = random_tensors(cfg, seed=KINDS.index(kind))
    ref = build(cfg, t, kv_type="f32").eval(IDS)
    got = build(cfg, t, kv_type="q8").eval(IDS)
    assert rel_diff(got, ref) < Q8_RTOL_TINY
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.8  # near-ties may flip (as for f16)
    assert_close_to_reference(got, reference_logits(cfg, dequantised(cfg, t), IDS))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_q8_decode_equals_prefill(kind: str) -> None:
    # Rows are quantised when stored, so one-by-one decode sees the same cache.
    cfg = tiny_config(kind)
    t = random_tensors(cfg)
    all_at_once = build(cfg, t, kv_type="q8", prefill_chunk=4).eval(IDS)
    e = build(cfg, t, kv_type="q8").engine
    one_by_one = np.stack([e.eval(np.array([x], np.int32), i) for i, x in enumerate(IDS)])
    np.testing.assert_allclose(one_by_one, all_at_once, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head_dim", [16, 64])
@pytest.mark.parametrize("kv_type", ["q8", "f16"])
def test_attention_simd_equals_scalar_reference(kv_type: str, head_dim: int) -> None:
    # The AVX2 attention kernels (q8, and f16 with F16C) against their scalar
    # oracles, through the engine. The matmuls are pinned to the LUT path, whose
    # kernels are bit-identical on every ISA (the int8 path exists on AVX-512
    # only), so what differs is the attention's summation order. Head size 64
    # takes the fused register kernels, 16 the reference. (At 128 a last-bit
    # difference flips an int8 activation rounding of a later matmul in these
    # random models, so the kernels themselves are compared directly below.)
    isas = [i for i in _core.supported_isas() if i != "scalar"]
    cfg = dataclasses.replace(tiny_config("llama"), head_dim=head_dim)
    # Which weights matters: with the converter's quantiser (pack_tensors since session 4) seeds
    # 0, 1 and 4 of these random models flip a table rounding at f16/64 (max |diff| 0.02-0.04),
    # and without the clip grid seed 1 does (0.007). The plain RTN of seed 0 is the model this
    # test was written against; the kernels are compared directly below.
    packed = pack_tensors(cfg, random_tensors(cfg), bits=4, group_size=32, clip_search=False)

    def logits(isa: str) -> np.ndarray:
        e = _core.Engine(engine_config(cfg), packed, n_ctx=32, n_threads=1, kv_type=kv_type, isa=isa)
        e.matmul_path = "lut"
        return e.eval(np.asarray(IDS, np.int32), 0, all_logits=True)

    ref = logits("scalar")
    for isa in isas:
        got = logits(isa)
        # A last-bit difference in an attention output can flip one int8 rounding of the
        # activation table of the next matmul (seen at head size 64 with some random models:
        # 0.03 at most, from that position on). So: almost every logit to 1e-4, all to 0.05;
        # a wrong kernel misses both by far. The kernels alone are compared exactly below.
        close = np.isclose(got, ref, rtol=1e-4, atol=1e-4)
        assert close.mean() > 0.9, f"{isa}: {close.mean():.1%} of logits within 1e-4"
        np.testing.assert_allclose(got, ref, rtol=0, atol=0.05, err_msg=isa)


def _attention_numpy(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    s = scale * (k.astype(np.float64) @ q.astype(np.float64))
    p = np.exp(s - s.max())
    return (p / p.sum()) @ v.astype(np.float64)


@pytest.mark.parametrize("n", [1, 7, 200])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128, 256, 384])
@pytest.mark.parametrize("kv_type", ["f32", "f16", "q8-32", "q8-head"])
def test_attention_head_kernels_against_numpy(kv_type: str, head_dim: int, n: int) -> None:
    """Every ISA's attention kernel for every cache type and head size against float64 numpy."""
    rng = np.random.default_rng(head_dim * 1000 + n)
    q = rng.standard_normal(head_dim).astype(np.float32)
    kf = rng.standard_normal((n, head_dim)).astype(np.float32) * 2
    vf = rng.standard_normal((n, head_dim)).astype(np.float32)
    scale = 1.0 / np.sqrt(head_dim)
    extra: tuple = ()
    if kv_type == "f32":
        k, v, kdq, vdq = kf, vf, kf, vf
    elif kv_type == "f16":
        k, v = kf.astype(np.float16).view(np.uint16), vf.astype(np.float16).view(np.uint16)
        kdq, vdq = k.view(np.float16).astype(np.float32), v.view(np.float16).astype(np.float32)
    else:
        block = 32 if kv_type == "q8-32" and head_dim % 32 == 0 else head_dim

        def q8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            xb = x.reshape(n, -1, block)
            d = np.abs(xb).max(axis=-1) / 127
            codes = np.rint(xb / d[..., None]).astype(np.int8)
            return (
                codes.reshape(n, head_dim),
                d.astype(np.float32),
                (codes * d[..., None]).reshape(n, head_dim),
            )

        k, ks, kdq = q8(kf)
        v, vs, vdq = q8(vf)
        extra = (ks, vs)
    want = _attention_numpy(q, kdq, vdq, scale)
    name = kv_type.split("-")[0]
    for isa in _core.supported_isas():
        got = _core.attention_head(q, k, v, *extra, kv_type=name, scale=float(scale), isa=isa)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=isa)


def test_attention_head_rejects_mismatched_rows() -> None:
    q = np.zeros(32, np.float32)
    with pytest.raises(ValueError, match="uint16"):
        _core.attention_head(
            q, np.zeros((4, 32), np.float32), np.zeros((4, 32), np.float32), kv_type="f16", scale=1.0
        )
    with pytest.raises(ValueError, match="q8 scales"):
        z8 = np.zeros((4, 32), np.int8)
        _core.attention_head(
            q, z8, z8, np.ones((4, 3), np.float32), np.ones((4, 3), np.float32), kv_type="q8", scale=1.0
        )


def test_q8_memory_and_bad_type() -> None:
    cfg = tiny_config("llama")  # head_dim 16: one scale per head and position
    t = random_tensors(cfg)
    f16 = build(cfg, t, kv_type="f16").engine.kv_bytes
    q8 = build(cfg, t, kv_type="q8").engine.kv_bytes
    assert q8 == f16 // 2 + f16 // 2 // 16 * 4  # 16 int8 + one fp32 scale per 16 values
    with pytest.raises(ValueError, match="kv_type must be 'f32', 'f16' or 'q8', got 'q4'"):
        build(cfg, t, kv_type="q4")


# ---- sliding context --------------------------------------------------------------
def test_slide_keeps_first_tokens_and_recent_half() -> None:
    cfg = tiny_config()
    m = Model.from_float(cfg, random_tensors(cfg), n_ctx=16, n_threads=1)
    with pytest.raises(ValueError, match="context_overflow must be one of error, slide"):
        m.set_context_overflow("wrap")
    with pytest.raises(ValueError, match="n_keep must be in"):
        m.set_context_overflow("slide", n_keep=8)
    m.set_context_overflow("slide", n_keep=3)
    ids = list(range(20))
    assert m._slide(ids) == [0, 1, 2] + ids[-6:]  # (16 - 3) // 2 recent tokens


def test_slide_generation_goes_past_the_context() -> None:
    cfg = tiny_config()
    t = random_tensors(cfg)
    m = Model.from_float(cfg, t, n_ctx=12, n_threads=1, kv_type="f32")  # as build(): no near-tie flips
    # The replay evaluates whole windows, generation one token at a time: the
    # same matmul kernels for both (auto picks int8 for chunks of 8 or more).
    m.engine.matmul_path = "lut"
    m.set_context_overflow("slide", n_keep=2)
    prompt = [3, 1, 4, 1, 5, 9]
    m.generate(prompt, 30, temperature=0.0)
    assert m.stats.finish_reason == "length"
    assert len(m.last_tokens) == 30
    # Replay: each token is the argmax of a fresh eval of the window the
    # engine held, which slides whenever the context is full.
    ref = build(cfg, t, n_ctx=12)
    ref.engine.matmul_path = "lut"
    window, slides = list(prompt), 0
    for tok in m.last_tokens:
        assert tok == int(ref.eval(window)[-1].argmax())
        if len(window) >= 12:
            window = window[:2] + (window + [tok])[-5:]
            slides += 1
        else:
            window.append(tok)
    assert slides >= 3


def test_slide_cuts_an_overlong_prompt_and_error_mode_still_raises() -> None:
    cfg = tiny_config()
    m = Model.from_float(cfg, random_tensors(cfg), CharTokenizer(), n_ctx=12, n_threads=1)
    with pytest.raises(ValueError, match="the prompt has 20 tokens but the context holds 12"):
        m.generate(list(range(20)), 2)
    m.set_context_overflow("slide", n_keep=2)
    m.generate(list(range(20)), 2, temperature=0.0)
    assert m.stats.prompt_tokens == 2 + 5
    assert len(m.last_tokens) == 2
    # Streaming goes through the same loop.
    text = "".join(m.generate("abcdefghij", 20, temperature=0.0, stream=True))
    assert m.stats.finish_reason == "length" and len(m.last_tokens) == 20
    assert text == CharTokenizer().decode(m.last_tokens)


# ---- real model -----------------------------------------------------------------
@pytest.fixture(scope="module")
def smol_path():
    return cache.default_model_file()


PROMPT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889. Locally nicknamed the Iron Lady, it was constructed as the centrepiece "
    "of the 1889 World's Fair."
)


@pytest.mark.slow
def test_smollm2_q8_logits_close_to_f32(smol_path) -> None:
    # Measured over this 78-token prompt, max |diff| as a share of the logit
    # range / mean |diff| / top-1 agreement against f32:
    #   matmul path auto (int8 prefill): f16 3.9% / 0.220 / 96.2%, q8 6.8% / 0.249 / 94.9%
    #   matmul path lut:                 f16 5.3% / 0.179 / 97.4%, q8 3.9% / 0.186 / 97.4%
    # Most of it is the matmuls' int8 activation rounding moving with any
    # change of K/V (the max is one position's outlier, hence the wide bound),
    # so q8 is bounded relative to f16 on the mean.
    models = {
        kv: edgelut.load(str(smol_path), n_threads=2, n_ctx=128, kv_type=kv) for kv in ("f32", "f16", "q8")
    }
    ids = models["f32"].tokenize(PROMPT)
    ref = models["f32"].eval(ids)
    f16, q8 = models["f16"].eval(ids), models["q8"].eval(ids)
    assert rel_diff(q8, ref) < Q8_RTOL_REAL
    assert np.abs(q8 - ref).mean() < 1.25 * np.abs(f16 - ref).mean()
    assert (q8.argmax(-1) == ref.argmax(-1)).mean() >= 0.93
    assert models["q8"].engine.kv_bytes < 0.6 * models["f16"].engine.kv_bytes


@pytest.mark.parametrize(
    ("question", "word"),
    [("What is the capital of France?", "paris"), ("What is 2 + 2?", "4")],
)
@pytest.mark.slow
def test_smollm2_q8_chat_answers(smol_path, question: str, word: str) -> None:
    m = edgelut.load(str(smol_path), n_threads=2, n_ctx=256, kv_type="q8")
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": question},
    ]
    assert word in m.chat(messages, max_tokens=40, temperature=0.0).lower()


@pytest.mark.slow
def test_cli_chat_slides_past_a_small_context(smol_path) -> None:
    # The history outgrows 64 tokens from the second turn on: sliding keeps
    # the system prompt's first tokens and the newest question.
    qs = "What is the capital of France?\nWhat is 2 + 2?\nWhat is the capital of France?\n"
    args = [str(smol_path), "-t", "2", "-c", "64", "--temp", "0", "-n", "40", "--kv-type", "q8"]
    cmd = [sys.executable, "-m", "edgelut.cli", "chat", *args, "--context-overflow", "slide", "--keep", "24"]
    p = subprocess.run(cmd, input=qs, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.lower().count("paris") >= 2, p.stdout


@pytest.mark.parametrize("kind", ["silu", "gelu_tanh"])
def test_gated_activation_kernels_against_numpy(kind: str) -> None:
    """Every ISA's SwiGLU / GeGLU against float64 numpy, over the range a model sees and far past it."""
    rng = np.random.default_rng(7)
    # 1003 values: whole vectors and a scalar tail; magnitudes up to 200 reach the exp clamp.
    gate = np.concatenate([rng.standard_normal(900) * 4, np.linspace(-200, 200, 103)]).astype(np.float32)
    up = rng.standard_normal(gate.size).astype(np.float32)
    g = gate.astype(np.float64)
    if kind == "silu":
        act = g / (1 + np.exp(-g))
    else:
        act = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
    want = act * up
    # float32 rounding of the arguments: relative to the result, and (GeGLU) to
    # g * up where 1 + tanh(u) cancels for negative g, in libm's version too.
    tol = 2e-6 * np.abs(want) + 5e-7 * np.abs(g * up) + 1e-30
    for isa in _core.supported_isas():
        got = _core.gated_activation(gate, up, kind=kind, isa=isa)
        bad = np.abs(got - want) > tol
        assert not bad.any(), (
            f"{isa}: {bad.sum()} values off, e.g. gate {gate[bad][:3]}: {got[bad][:3]} vs {want[bad][:3]}"
        )
    with pytest.raises(ValueError, match="kind must be"):
        _core.gated_activation(gate, up, kind="relu")


# ---- saved conversations (prompt cache slots) -----------------------------------
@pytest.mark.parametrize("kv_type", ["f32", "f16", "q8"])
def test_kv_snapshot_restores_positions_exactly(kv_type) -> None:
    cfg = tiny_config()
    m = Model.from_float(cfg, random_tensors(cfg), n_ctx=64, n_threads=1, kv_type=kv_type)
    e = m._engine
    a, b = np.arange(3, 40, dtype=np.int32), np.arange(50, 90, dtype=np.int32)
    e.eval(a, 0)
    saved = e.kv_snapshot()
    want = e.eval(np.asarray([7], np.int32), len(a))
    e.reset()
    e.eval(b, 0)
    e.kv_restore(saved, len(a))
    np.testing.assert_array_equal(e.eval(np.asarray([7], np.int32), len(a)), want)
    with pytest.raises(ValueError, match="not a snapshot"):
        e.kv_restore(saved[:-1], len(a))


def test_interleaved_conversations_each_continue_from_their_own_cache() -> None:
    cfg = tiny_config()
    tensors = random_tensors(cfg)
    rng = np.random.default_rng(3)
    conv_a = rng.integers(3, cfg.vocab_size, 150).tolist()
    conv_b = rng.integers(3, cfg.vocab_size, 140).tolist()
    turn = rng.integers(3, cfg.vocab_size, 20).tolist()

    def run(m: Model, *prompts: list[int]) -> list[int]:
        for p in prompts:
            m.generate(p, 6, temperature=0.0)
        return list(m.last_tokens)

    alone = Model.from_float(cfg, tensors, n_ctx=256, n_threads=1)
    first = run(alone, conv_a)
    follow_up = conv_a + first + turn
    want = run(alone, follow_up)
    assert alone.stats.cached_tokens >= len(conv_a)

    for budget, cached in ((0, False), (1 << 20, True)):
        m = Model.from_float(cfg, tensors, n_ctx=256, n_threads=1)
        m.prompt_cache_bytes = budget
        assert run(m, conv_a, conv_b, follow_up) == want
        assert (m.stats.cached_tokens >= len(conv_a)) == cached
    # Back to b: saved when the follow-up took the cache.
    m.generate(conv_b + [5, 6], 2, temperature=0.0)
    assert m.stats.cached_tokens >= len(conv_b)
    # A budget smaller than one conversation's cache keeps none.
    small = Model.from_float(cfg, tensors, n_ctx=256, n_threads=1)
    small.prompt_cache_bytes = 1000
    run(small, conv_a, conv_b, follow_up)
    assert small.stats.cached_tokens == 0 and small._saved == []
