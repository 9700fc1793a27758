"""The C++ engine against an independent numpy forward over the dequantised weights.

The engine's only approximation is the int8 activation tables of the LUT
matmuls (csrc/kernels/lut.h); everything else is float32. So its logits must
track the numpy forward closely (LOGIT_RTOL below, measured up to 1.7% on these
models) and pick the same top tokens. Paths that compute the same thing
(prefill vs decode, thread counts, shards) must agree to float rounding.
"""

from __future__ import annotations

import select
import threading
from pathlib import Path

import numpy as np
import pytest
import real_model

from edgelut import Model, _core
from edgelut.model import GenerateOptions, _TextStream, pack_tensors, shard_tensors
from edgelut.models.config import ModelConfig

# Engine vs numpy over dequantised weights: max |diff| / max |logit|.
LOGIT_RTOL = 0.035


# ---- tiny models -------------------------------------------------------------
def tiny_config(kind: str = "llama") -> ModelConfig:
    common = dict(
        vocab_size=100, hidden_size=64, intermediate_size=96, n_layers=2, head_dim=16, context_length=64
    )
    if kind == "llama":
        return ModelConfig(architecture="llama", n_heads=6, n_kv_heads=3, rope_theta=10000.0, **common)
    if kind == "qwen2":
        return ModelConfig(
            architecture="qwen2",
            n_heads=4,
            n_kv_heads=2,
            attn_bias=True,
            rope_theta=1e6,
            tie_embeddings=True,
            **common,
        )
    if kind == "adjacent":
        return ModelConfig(
            architecture="llama",
            n_heads=4,
            n_kv_heads=4,
            rope_style="adjacent",
            rope_scaling={"type": "linear", "factor": 2.0},
            **common,
        )
    if kind == "freq_factors":
        factors = [3.0, 0.5, 2.0, 1.0, 4.0, 1.0, 8.0, 1.0]  # head_dim / 2 divisors (Llama 3.1 style)
        return ModelConfig(
            architecture="llama",
            n_heads=4,
            n_kv_heads=2,
            rope_scaling={"type": "freq_factors", "factors": factors},
            **common,
        )
    raise AssertionError(kind)


def random_tensors(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    D, F, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    qd, kvd = cfg.n_heads * hd, cfg.n_kv_heads * hd

    def lin(n: int, k: int) -> np.ndarray:
        return (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t = {
        "token_embd.weight": rng.standard_normal((cfg.vocab_size, D)).astype(np.float32),
        "output_norm.weight": norm(D),
    }
    if not cfg.tie_embeddings:
        t["output.weight"] = lin(cfg.vocab_size, D)
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        t |= {
            p + "attn_norm.weight": norm(D),
            p + "attn_q.weight": lin(qd, D),
            p + "attn_k.weight": lin(kvd, D),
            p + "attn_v.weight": lin(kvd, D),
            p + "attn_output.weight": lin(D, qd),
            p + "ffn_norm.weight": norm(D),
            p + "ffn_gate.weight": lin(F, D),
            p + "ffn_up.weight": lin(F, D),
            p + "ffn_down.weight": lin(D, F),
        }
        if cfg.attn_bias:
            t |= {
                p + "attn_q.bias": 0.1 * rng.standard_normal(qd).astype(np.float32),
                p + "attn_k.bias": 0.1 * rng.standard_normal(kvd).astype(np.float32),
                p + "attn_v.bias": 0.1 * rng.standard_normal(kvd).astype(np.float32),
            }
    return t


def dequantised(cfg: ModelConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float weights the engine actually computes with (RTN q4, group 32)."""
    packed = pack_tensors(cfg, tensors, bits=4, group_size=32)
    out = {k: (v if isinstance(v, np.ndarray) else v.dequantize()) for k, v in packed.items()}
    out.setdefault("output.weight", out["token_embd.weight"])
    return out


# ---- the numpy forward (independent of the engine) ----------------------------
def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope(v: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool) -> np.ndarray:
    # v (T, H, hd); cos/sin (T, 1, hd/2)
    half = v.shape[-1] // 2
    a, b = (v[..., :half], v[..., half:]) if neox else (v[..., 0::2], v[..., 1::2])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    out = np.empty_like(v)
    if neox:
        out[..., :half], out[..., half:] = ra, rb
    else:
        out[..., 0::2], out[..., 1::2] = ra, rb
    return out


def reference_logits(cfg: ModelConfig, W: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Logits (T, vocab) of a llama/qwen2 decoder, in float64."""
    T, hd, H, KV = len(ids), cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    scaling = cfg.rope_scaling or {}
    factor = scaling.get("factor", 1.0)
    inv = cfg.rope_theta ** (-np.arange(0, hd, 2) / hd) / np.asarray(scaling.get("factors", 1.0))
    ang = (np.arange(T) / factor)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    neox = cfg.rope_style == "neox"
    mask = np.triu(np.full((T, T), -np.inf), 1)
    x = W["token_embd.weight"][ids].astype(np.float64)
    for i in range(cfg.n_layers):
        w = {k[len(f"blk.{i}.") :]: v for k, v in W.items() if k.startswith(f"blk.{i}.")}
        h = _rms(x, w["attn_norm.weight"], cfg.rms_norm_eps)
        q, k, v = (h @ w[f"attn_{n}.weight"].T + w.get(f"attn_{n}.bias", 0.0) for n in "qkv")
        q = _rope(q.reshape(T, H, hd), cos, sin, neox)
        k = np.repeat(_rope(k.reshape(T, KV, hd), cos, sin, neox), H // KV, axis=1)
        v = np.repeat(v.reshape(T, KV, hd), H // KV, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", p, v).reshape(T, H * hd) @ w["attn_output.weight"].T
        h = _rms(x, w["ffn_norm.weight"], cfg.rms_norm_eps)
        g, u = h @ w["ffn_gate.weight"].T, h @ w["ffn_up.weight"].T
        x = x + (g / (1.0 + np.exp(-g)) * u) @ w["ffn_down.weight"].T
    return _rms(x, W["output_norm.weight"], cfg.rms_norm_eps) @ W["output.weight"].T


def assert_close_to_reference(got: np.ndarray, ref: np.ndarray) -> None:
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < LOGIT_RTOL, f"engine logits differ from numpy by {err:.4f} of the logit range"
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.8  # near-ties may flip


IDS = [3, 17, 42, 99, 0, 5, 5, 61, 23, 8, 77, 12, 30]


@pytest.fixture(scope="module", params=["llama", "qwen2", "adjacent", "freq_factors"])
def tiny(request):
    cfg = tiny_config(request.param)
    tensors = random_tensors(
        cfg, seed={"llama": 0, "qwen2": 1, "adjacent": 2, "freq_factors": 4}[request.param]
    )
    return cfg, tensors, dequantised(cfg, tensors)


def build(cfg, tensors, **kw) -> Model:
    kw.setdefault("n_ctx", 32)
    kw.setdefault("n_threads", 1)
    kw.setdefault("kv_type", "f32")
    return Model.from_float(cfg, tensors, bits=4, group_size=32, **kw)


# ---- forward ---------------------------------------------------------------------
def test_prefill_matches_numpy_reference(tiny):
    cfg, tensors, W = tiny
    got = build(cfg, tensors).eval(IDS)
    assert got.shape == (len(IDS), cfg.vocab_size)
    assert_close_to_reference(got, reference_logits(cfg, W, IDS))


def test_decode_token_by_token_equals_prefill(tiny):
    cfg, tensors, _ = tiny
    m = build(cfg, tensors, prefill_chunk=4)  # prefill in 4-token chunks
    all_at_once = m.eval(IDS)
    e = build(cfg, tensors).engine
    one_by_one = np.stack([e.eval(np.array([t], np.int32), i) for i, t in enumerate(IDS)])
    np.testing.assert_allclose(one_by_one, all_at_once, rtol=1e-5, atol=1e-5)


# 7 threads on a 2-core machine: most of them are descheduled at any moment, so
# the chunks of each job go to whichever threads run (csrc/engine/thread_pool.h).
@pytest.mark.parametrize("n_threads", [2, 3, 7])
def test_thread_counts_agree(tiny, n_threads):
    cfg, tensors, _ = tiny
    one = build(cfg, tensors, n_threads=1)
    many = build(cfg, tensors, n_threads=n_threads)
    # Every output row is computed whole by one thread, so how a job is split
    # cannot change a value: prefill and then decode are bit-identical.
    np.testing.assert_array_equal(many.eval(IDS), one.eval(IDS))
    for m in (one, many):
        m.reset()
    got = [many.engine.eval(np.array([t], np.int32), i) for i, t in enumerate(IDS)]
    want = [one.engine.eval(np.array([t], np.int32), i) for i, t in enumerate(IDS)]
    np.testing.assert_array_equal(np.stack(got), np.stack(want))


def test_fp16_kv_cache_matches_numpy_reference(tiny):
    # fp16 K/V shift the LUT tables' int8 rounding, so compare with the
    # reference (same tolerance), not bit-for-bit with the fp32 cache.
    cfg, tensors, W = tiny
    assert_close_to_reference(build(cfg, tensors, kv_type="f16").eval(IDS), reference_logits(cfg, W, IDS))


@pytest.mark.parametrize("path", ["lut", "int8"])
def test_truncate_and_reeval_equals_fresh_eval(tiny, path):
    # The matmul path is pinned: "auto" picks it from the token count per call,
    # and the two paths round differently (each within its bound).
    cfg, tensors, _ = tiny
    e = build(cfg, tensors).engine
    e.matmul_path = path
    other = [7, 7, 1, 2, 3]
    e.eval(np.array(IDS, np.int32), 0)
    e.truncate(5)
    assert e.n_past == 5
    reused = e.eval(np.array(other, np.int32), 5, all_logits=True)
    fresh_engine = build(cfg, tensors).engine
    fresh_engine.matmul_path = path
    fresh = fresh_engine.eval(np.array(IDS[:5] + other, np.int32), 0, all_logits=True)
    np.testing.assert_allclose(reused, fresh[5:], rtol=1e-6, atol=1e-6)


def run_shards(cfg, tensors, specs) -> list[np.ndarray]:
    comms = _core.make_local_group(len(specs))
    models = [build(cfg, tensors, shard=s, communicator=c) for s, c in zip(specs, comms, strict=True)]
    out: list = [None] * len(models)

    def work(i: int) -> None:
        out[i] = models[i].eval(IDS)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(models))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.parametrize(
    "specs",
    [
        [(0, 4, 0, 64), (4, 6, 64, 96)],  # uneven q heads and FFN columns
        [(0, 2, 0, 32), (2, 4, 32, 64), (4, 6, 64, 96)],
    ],
)
def test_sharded_equals_unsharded(specs):
    # 6 q heads of 16 over 3 kv heads, 96 FFN columns: splits on 32-column groups (tests/test_shards.py
    # has splits inside a GQA group).
    cfg = tiny_config("llama")
    tensors = random_tensors(cfg, seed=3)
    whole = build(cfg, tensors).eval(IDS)
    for got in run_shards(cfg, tensors, [_core.ShardSpec(*s) for s in specs]):
        np.testing.assert_allclose(got, whole, rtol=1e-4, atol=1e-4)


def test_shard_slices_weights():
    cfg = tiny_config("qwen2")
    t = random_tensors(cfg)
    s = shard_tensors(cfg, t, _core.ShardSpec(2, 4, 32, 96))  # q heads 2, 3: kv head 1
    np.testing.assert_array_equal(s["blk.0.attn_q.weight"], t["blk.0.attn_q.weight"][32:64])
    np.testing.assert_array_equal(s["blk.0.attn_k.bias"], t["blk.0.attn_k.bias"][16:32])
    np.testing.assert_array_equal(s["blk.0.attn_output.weight"], t["blk.0.attn_output.weight"][:, 32:64])
    np.testing.assert_array_equal(s["blk.1.ffn_down.weight"], t["blk.1.ffn_down.weight"][:, 32:96])
    np.testing.assert_array_equal(s["token_embd.weight"], t["token_embd.weight"])


# ---- errors ------------------------------------------------------------------------
def test_position_beyond_context_raises():
    cfg = tiny_config()
    e = build(cfg, random_tensors(cfg), n_ctx=8).engine
    with pytest.raises(ValueError, match="do not fit the context of 8 tokens"):
        e.eval(np.arange(9, dtype=np.int32), 0)
    e.eval(np.arange(8, dtype=np.int32), 0)
    with pytest.raises(ValueError, match="do not fit the context"):
        e.eval(np.array([1], np.int32), 8)
    with pytest.raises(ValueError, match="start_pos 9 must be in"):
        e.eval(np.array([1], np.int32), 9)


def test_bad_ids_and_shapes_raise():
    cfg = tiny_config()
    t = random_tensors(cfg)
    e = build(cfg, t).engine
    with pytest.raises(ValueError, match="token id 100 at index 1 is outside the vocabulary"):
        e.eval(np.array([1, 100], np.int32), 0)
    with pytest.raises(ValueError, match="need at least one token"):
        e.eval(np.array([], np.int32), 0)
    with pytest.raises(ValueError, match="truncate"):
        e.truncate(5)
    bad = dict(t)
    bad["blk.1.ffn_up.weight"] = bad["blk.1.ffn_up.weight"][:64]
    with pytest.raises(
        ValueError, match=r"'blk.1.ffn_up.weight' has shape \(64, 64\) but this shard needs \(96, 64\)"
    ):
        build(cfg, bad)
    missing = {k: v for k, v in t.items() if k != "blk.0.ffn_norm.weight"}
    with pytest.raises(ValueError, match="missing tensor 'blk.0.ffn_norm.weight'"):
        build(cfg, missing)
    with pytest.raises(ValueError, match=r"q heads \[0, 7\) must be a non-empty range inside \[0, 6\)"):
        build(cfg, t, shard=_core.ShardSpec(0, 7))


# ---- sampler --------------------------------------------------------------------------
def sampler(**kw) -> _core.Sampler:
    p = _core.SamplerParams()
    for k, v in kw.items():
        setattr(p, k, v)
    return _core.Sampler(p)


NO_RECENT = np.zeros(0, np.int32)


def test_greedy_and_top_k_1_are_argmax():
    rng = np.random.default_rng(0)
    for _ in range(20):
        logits = rng.standard_normal(1000).astype(np.float32) * 3
        assert sampler(temperature=0.0).sample(logits, NO_RECENT) == logits.argmax()
        assert sampler(temperature=1.5, top_k=1, seed=7).sample(logits, NO_RECENT) == logits.argmax()


def test_seed_reproducible_and_sampling_follows_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.2] + [1e-9] * 7, np.float32))
    draws = [
        sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=s).sample(logits, NO_RECENT)
        for s in range(4)
    ]
    again = [
        sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=s).sample(logits, NO_RECENT)
        for s in range(4)
    ]
    assert draws == again
    s = sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1)
    counts = np.bincount([s.sample(logits, NO_RECENT) for _ in range(3000)], minlength=10)
    np.testing.assert_allclose(counts[:3] / 3000, [0.5, 0.3, 0.2], atol=0.04)
    assert counts[3:].sum() == 0


def test_top_p_and_min_p_cut_the_tail():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    s = sampler(temperature=1.0, top_k=0, top_p=0.7, min_p=0.0, seed=2)
    assert set(s.sample(logits, NO_RECENT) for _ in range(300)) == {0, 1}
    s = sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.35, seed=2)
    assert set(s.sample(logits, NO_RECENT) for _ in range(300)) == {0, 1}


def test_repetition_penalty_over_last_n():
    logits = np.array([2.0, 1.9, -1.0], np.float32)
    s = sampler(temperature=0.0, repeat_penalty=1.5, repeat_last_n=2)
    assert s.sample(logits, np.array([1, 0], np.int32)) == 0  # both penalised: order kept
    assert s.sample(logits, np.array([0, 2], np.int32)) == 1
    assert s.sample(logits, np.array([0, 2, 2], np.int32)) == 0  # token 0 fell out of the window


def test_presence_and_frequency_penalties():
    logits = np.array([2.0, 1.5, 1.2], np.float32)
    s = sampler(temperature=0.0, presence_penalty=0.6, repeat_last_n=8)
    assert s.sample(logits, np.array([0], np.int32)) == 1  # 2.0 - 0.6 < 1.5
    assert s.sample(logits, np.array([0, 0, 0], np.int32)) == 1  # once, whatever the count
    s = sampler(temperature=0.0, frequency_penalty=0.2, repeat_last_n=8)
    assert s.sample(logits, np.array([0, 0], np.int32)) == 0  # 2.0 - 0.4 > 1.5
    assert s.sample(logits, np.array([0, 0, 0], np.int32)) == 1  # 2.0 - 0.6 < 1.5
    s = sampler(temperature=0.0, presence_penalty=-1.0, repeat_last_n=1)
    assert s.sample(logits, np.array([2], np.int32)) == 2  # a negative penalty favours the token
    assert s.sample(logits, np.array([2, 1], np.int32)) == 1  # only the last repeat_last_n count


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"presence_penalty": 2.5}, r"presence_penalty must be in \[-2, 2\]"),
        ({"frequency_penalty": float("nan")}, r"frequency_penalty must be in \[-2, 2\]"),
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"top_k": -2}, "top_k must be >= 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"min_p": 1.0}, r"min_p must be in \[0, 1\)"),
        ({"repeat_penalty": 0.0}, "repeat_penalty must be > 0"),
        ({"repeat_last_n": -1}, "repeat_last_n must be >= 0"),
    ],
)
def test_invalid_sampler_params_raise(kw, msg):
    with pytest.raises(ValueError, match=msg):
        sampler(**kw)
    cfg = tiny_config()
    m = build(cfg, random_tensors(cfg))
    with pytest.raises(ValueError, match=msg):
        m.generate([1, 2, 3], 4, **kw)


# ---- the Model API ------------------------------------------------------------------------
class CharTokenizer:
    """A stand-in tokenizer: token id i is chr(ord('a') + i % 26); id 99 is EOS."""

    eos_token_id = 99

    def encode(self, text: str) -> list[int]:
        return [ord(c) - ord("a") for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(ord("a") + i % 26) for i in ids if i != 99)

    def apply_chat_template(self, messages, add_generation_prompt=True) -> str:
        return "".join(f"{m['role'][0]}{m['content']}z" for m in messages) + (
            "a" if add_generation_prompt else ""
        )


def test_generate_greedy_follows_argmax_and_caches_prompt():
    cfg = tiny_config()
    t = random_tensors(cfg)
    m = Model.from_float(cfg, t, CharTokenizer(), n_ctx=64, n_threads=1)
    ids = [3, 1, 4, 1, 5]
    out = m.generate(ids, 6, temperature=0.0)
    toks = m.last_tokens
    assert out == CharTokenizer().decode(toks)
    # Each greedy token is the argmax of a fresh eval of everything before it.
    ref = build(cfg, t, n_ctx=64, kv_type="f16")  # the same KV type as m: near-ties must agree
    seq = list(ids)
    for tok in toks:
        assert tok == int(ref.eval(seq)[-1].argmax())
        seq.append(tok)
    # A second call that extends the first reuses the cache.
    m.generate(ids + toks + [2], 3, temperature=0.0)
    assert m.stats.cached_tokens == len(ids) + len(toks) - 1
    assert m.stats.prompt_tokens == len(ids) + len(toks) + 1
    assert m.stats.peak_rss_mb > 0


def test_stream_equals_non_stream_and_seeded_runs_repeat():
    cfg = tiny_config()
    m = Model.from_float(cfg, random_tensors(cfg), CharTokenizer(), n_ctx=64, n_threads=1)
    a = m.generate("hello", 10, temperature=1.0, seed=5)
    m.reset()
    b = "".join(m.generate("hello", 10, temperature=1.0, seed=5, stream=True))
    c = m.generate("hello", 10, temperature=1.0, seed=5)  # via the prompt cache
    assert a == b == c


def test_stop_strings_and_chat():
    cfg = tiny_config()
    m = Model.from_float(cfg, random_tensors(cfg), CharTokenizer(), n_ctx=64, n_threads=1)
    full = m.generate("abc", 12, temperature=0.0)
    if len(full) >= 4:
        stop = full[2:4]
        cut = m.generate("abc", 12, temperature=0.0, stop=[stop])
        assert cut == full[: full.find(stop)]
        assert m.stats.finish_reason == "stop"
        assert "".join(m.generate("abc", 12, temperature=0.0, stop=stop, stream=True)) == cut
    reply = m.chat([{"role": "user", "content": "hi"}], 5, temperature=0.0)
    assert isinstance(reply, str)
    second = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "ok"},
    ]
    m.chat(second, 5, temperature=0.0)
    assert m.stats.cached_tokens > 0


def test_context_overflow():
    cfg = tiny_config()
    m = Model.from_float(cfg, random_tensors(cfg), n_ctx=8, n_threads=1)
    with pytest.raises(ValueError, match="the prompt has 8 tokens but the context holds 8"):
        m.generate(list(range(8)), 2)
    m.generate(list(range(6)), 10, temperature=0.0)
    assert m.stats.finish_reason == "context"
    assert len(m.last_tokens) == 3  # positions 6 and 7 were filled, then one more token sampled


def test_token_channel_hands_tokens_over_with_one_wakeup():
    ch = _core.TokenChannel()
    assert select.select([ch.fileno()], [], [], 0)[0] == []  # nothing pending: not readable
    assert ch.push(5) and ch.push(7)
    assert select.select([ch.fileno()], [], [], 0)[0] == [ch.fileno()]
    assert ch.drain() == ([5, 7], False)
    assert select.select([ch.fileno()], [], [], 0)[0] == []  # the drain took the wake-up too
    ch.cancel()
    assert ch.cancelled and not ch.push(9)  # a cancelled channel tells the producer to stop
    ch.finish()
    assert ch.drain() == ([9], True)


def test_streams_never_lose_their_wakeup():
    # Tokens of a tiny model come microseconds apart, so the consumer's drain
    # races the producer's pushes. A drain that cleared its flag before
    # emptying the pipe once swallowed the byte of a push landing in between;
    # the consumer then waited forever in select (a CI hang, reproduced here
    # within 13-52 streams). The streams run on a thread so that such a hang
    # fails the test instead of stalling the run.
    cfg = tiny_config()
    m = Model.from_float(cfg, random_tensors(cfg), CharTokenizer(), n_ctx=12, n_threads=1)
    m.set_context_overflow("slide", n_keep=2)
    texts: list[str] = []

    def stream() -> None:
        for _ in range(300):
            texts.append("".join(m.generate("abcdefghij", 20, temperature=0.0, stream=True)))

    worker = threading.Thread(target=stream, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), f"a stream lost its wake-up after {len(texts)} of 300"
    assert len(set(texts)) == 1 and len(texts[0]) > 0


def test_generate_takes_one_sink():
    cfg = tiny_config()
    m = Model.from_float(cfg, random_tensors(cfg), n_ctx=32, n_threads=1)
    sampler = Model.sampler_params(GenerateOptions(temperature=0.0))
    ids = np.asarray([1, 2, 3], dtype=np.int32)
    for kw in ({}, {"on_token": lambda t: True, "channel": _core.TokenChannel()}):
        with pytest.raises(ValueError, match="exactly one of on_token and channel"):
            m._engine.generate(ids, max_tokens=2, eos=[], sampler=sampler, history=[], **kw)


def test_completion_over_a_channel_equals_inline_and_stops_early():
    cfg = tiny_config()
    m = Model.from_float(cfg, random_tensors(cfg), CharTokenizer(), n_ctx=64, n_threads=1)
    ids = m.tokenize("abc")
    opts = GenerateOptions(max_tokens=12, temperature=0.0, ignore_eos=True)
    inline: list[str] = []
    m.complete(ids, opts, inline.append)
    want, want_tokens = "".join(inline), list(m.last_tokens)
    m.reset()
    # The producer on a thread, the consumer here: the pieces are the same text.
    c = m.completion(ids, opts)
    worker = threading.Thread(target=c.run_quietly)
    worker.start()
    got: list[str] = []
    while not c.finished:
        select.select([c.fileno()], [], [], 10)
        got += c.pieces()
    worker.join()
    got += c.finish()
    assert "".join(got) == want and m.last_tokens == want_tokens
    assert c.stats is m.stats and m.stats.completion_tokens == 12 and m.stats.finish_reason == "length"
    # A stop string seen by the consumer cancels the loop; a token sampled
    # meanwhile is not part of the reply.
    if len(want) >= 4:
        stop = want[2:4]
        c = m.completion(ids, GenerateOptions(max_tokens=12, temperature=0.0, ignore_eos=True, stop=[stop]))
        c.run()  # everything is queued in the channel before the consumer looks
        pieces = c.finish()
        assert "".join(pieces) == want[: want.find(stop)]
        assert m.stats.finish_reason == "stop"
        assert len(m.last_tokens) < 12
    # Cancelling before the first token: the loop stops after one token.
    c = m.completion(ids, opts)
    c.cancel()
    c.run()
    assert c.finish() == [] and m.stats.finish_reason == "cancelled"
    assert m.stats.completion_tokens == 1


def test_completion_failure_reaches_the_consumer():
    cfg = tiny_config()
    m = Model.from_float(cfg, random_tensors(cfg), CharTokenizer(), n_ctx=64, n_threads=1)
    c = m.completion(m.tokenize("abc"), GenerateOptions(max_tokens=4))
    c._sampler = None  # the engine refuses it inside run
    c.run_quietly()
    assert c.finished is False and c.pieces() == [] and c.finished
    with pytest.raises(TypeError):
        c.finish()
    # The model is usable afterwards, and its cache still matches.
    assert m.generate("abc", 3, temperature=0.0) == m.generate("abc", 3, temperature=0.0)


def test_text_stream_holds_back_partial_stop():
    s = _TextStream(CharTokenizer(), ["cd"])
    assert s.push(0) == "a"
    assert s.push(2) == ""  # "c" might start "cd"
    assert s.push(3) == "" and s.done
    s = _TextStream(CharTokenizer(), ["cd"])
    assert [s.push(2), s.push(4)] == ["", "ce"]


# ---- the real model -------------------------------------------------------------------------------
GGUF = real_model.smollm2_gguf()


def load_gguf(path: Path) -> tuple[ModelConfig, dict[str, np.ndarray], list[str]]:
    """Float weights (Hugging Face order), config and vocabulary through edgelut's GGUF importer."""
    import json

    from edgelut.models.importers import load_model

    model = load_model(path)
    vocab = json.loads(model.tokenizer.tokenizer_json)["model"]["vocab"]
    by_id = sorted(vocab, key=vocab.get)
    return model.config, dict(model.tensors), by_id


@pytest.mark.slow
def test_smollm2_greedy_tokens_match_numpy():
    cfg, tensors, vocab = load_gguf(GGUF)
    words = [
        "The",
        "Ġcapital",
        "Ġof",
        "ĠFrance",
        "Ġis",
        "ĠParis",
        ".",
        "ĠThe",
        "Ġcapital",
        "Ġof",
        "ĠGermany",
        "Ġis",
    ]
    ids = [vocab.index(w) for w in words]
    packed = pack_tensors(cfg, tensors, clip_search=False)
    m = Model.from_packed(cfg, packed, n_ctx=64, n_threads=2)
    W = {k: (v if isinstance(v, np.ndarray) else v.dequantize()) for k, v in packed.items()}
    W["output.weight"] = W["token_embd.weight"]
    ref = reference_logits(cfg, W, ids)
    got = m.eval(ids)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
    assert got[-1].argmax() == ref[-1].argmax()
    assert vocab[int(got[-1].argmax())] == "ĠBerlin"
    # Greedy continuation: every token is the numpy argmax of the sequence so far.
    m.generate(ids, 4, temperature=0.0)
    seq = list(ids)
    for tok in m.last_tokens:
        assert tok == int(reference_logits(cfg, W, seq)[-1].argmax())
        seq.append(tok)


def test_load_from_imported_model():
    from edgelut import load
    from edgelut.models.config import ImportedModel, TokenizerData

    cfg = tiny_config("qwen2")
    t = random_tensors(cfg)
    m = load(ImportedModel(cfg, t, TokenizerData("{}")), n_threads=1, n_ctx=16, tokenizer=CharTokenizer())
    assert m.n_ctx == 16 and m.n_threads == 1
    np.testing.assert_allclose(
        m.eval(IDS[:5]), build(cfg, t, kv_type="f16").eval(IDS[:5]), rtol=1e-6, atol=1e-6
    )
    with pytest.raises(TypeError, match="ImportedModel-like"):
        load(42)
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        load("/nonexistent/model.gguf")
