"""Qwen3 and Gemma 3 on tiny random models: importers, numpy reference, engine, ring KV cache.

Each family's tiny model is written by the test as a GGUF (as llama.cpp's
converter lays it out) and as a Hugging Face directory (Gemma's norms stored
as ``w`` of ``x * (1 + w)``); both importers must give the same config and
weights, and the C++ engine must follow models/reference.py over the
dequantised weights. Gemma's sliding-window layers are checked against a
full cache with a window mask, at contexts several windows long.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import tiny_config, tiny_weights, write_gguf, write_hf_dir

from edgelut import Model, _core
from edgelut.model import engine_config, pack_tensors
from edgelut.models.config import ModelConfig
from edgelut.models.gguf_file import Metadata
from edgelut.models.importers import load_model
from edgelut.models.importers.gguf import config_from_metadata
from edgelut.models.reference import forward

# Engine (int8 activation tables) vs numpy over the same q4 weights: measured up to 0.035
# on these models (0.031 on the same shapes with qk_norm off, so it is the tables' noise).
LOGIT_RTOL = 0.05
WINDOW = 5
ORIGINAL = 16  # Phi-3's original context here; IDS is one token longer


def family_config(arch: str) -> ModelConfig:
    if arch == "qwen3":  # head_dim 32 with hidden 64 and 4 heads: q is wider than the model
        return tiny_config("qwen3", head_dim=32, rope_theta=1e6, tie_embeddings=True)
    if arch == "gemma3":
        return tiny_config(
            "gemma3",
            n_layers=3,
            n_kv_heads=1,
            head_dim=32,
            rope_theta=1e6,
            tie_embeddings=True,
            rms_norm_eps=1e-6,
            sliding_window=WINDOW,
            sliding_window_pattern=3,  # layers 0, 1 sliding, layer 2 global
            rope_local_theta=10000.0,
            attn_scale=24.0**-0.5,  # query_pre_attn_scalar 24, not head_dim
        )
    if arch == "phi3":  # Phi-4-mini's shape: partial RoPE (0.75 of each head) with LongRoPE
        return tiny_config(
            "phi3",
            rope_dim=12,
            rope_scaling={
                "type": "longrope",
                "factors": [1.0, 1.1, 1.3, 1.8, 2.5, 4.0],
                "long_factors": [1.0, 1.5, 3.0, 6.0, 12.0, 30.0],
                "original_context": ORIGINAL,
            },
            context_length=4 * ORIGINAL,
            rope_mscale=float(np.float32(math.sqrt(1 + math.log(4) / math.log(ORIGINAL)))),  # HF's, for 4x
            tie_embeddings=True,
        )
    raise AssertionError(arch)


FAMILIES = ["qwen3", "gemma3", "phi3"]
IDS = [5, 70, 123, 9, 200, 31, 31, 88, 250, 17, 4, 140, 66, 99, 12, 180, 7]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    cfg = family_config(request.param)
    tensors = tiny_weights(cfg, seed=FAMILIES.index(request.param) + 10)
    root = tmp_path_factory.mktemp(request.param)
    gguf_model = load_model(write_gguf(root / "tiny.gguf", cfg, tensors))
    hf_model = load_model(write_hf_dir(root / "hf", cfg, tensors))
    return cfg, tensors, gguf_model, hf_model


def dequantised(cfg: ModelConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    packed = pack_tensors(cfg, tensors, bits=4, group_size=32)
    return {k: (v if isinstance(v, np.ndarray) else v.dequantize()) for k, v in packed.items()}


class Weights:
    def __init__(self, config: ModelConfig, tensors: dict[str, np.ndarray]) -> None:
        self.config, self.tensors = config, tensors


def build(cfg: ModelConfig, tensors: dict[str, np.ndarray], **kw) -> Model:
    kw.setdefault("n_ctx", 64)
    kw.setdefault("n_threads", 1)
    kw.setdefault("kv_type", "f32")
    return Model.from_float(cfg, tensors, bits=4, group_size=32, **kw)


# ---- importers -------------------------------------------------------------------------------
def test_gguf_and_hf_importers_agree(family):
    cfg, tensors, g, h = family
    for field in ("architecture", "qk_norm", "post_norms", "ffn_act", "sliding_window", "head_dim"):
        assert getattr(g.config, field) == getattr(h.config, field) == getattr(cfg, field), field
    assert g.config.sliding_window_pattern == h.config.sliding_window_pattern == cfg.sliding_window_pattern
    assert g.config.rope_local_theta == h.config.rope_local_theta == cfg.rope_local_theta
    assert g.config.embed_scale == pytest.approx(h.config.embed_scale)
    assert (g.config.rope_dim, g.config.context_length) == (h.config.rope_dim, h.config.context_length)
    assert g.config.rope_mscale == pytest.approx(h.config.rope_mscale, rel=1e-7)
    gs, hs = g.config.rope_scaling, h.config.rope_scaling
    assert gs == hs or (gs.keys() == hs.keys() and np.allclose(gs["factors"], hs["factors"]))
    if gs and gs["type"] == "longrope":  # float32 in the GGUF, float64 in config.json
        np.testing.assert_allclose(gs["long_factors"], hs["long_factors"], rtol=1e-7)
        assert gs["original_context"] == hs["original_context"] == ORIGINAL
    # GGUF carries no query_pre_attn_scalar (llama.cpp derives 1/sqrt(head_dim)); HF does.
    assert h.config.query_scale == pytest.approx(cfg.query_scale)
    assert set(g.tensors) == set(h.tensors) == set(tensors)
    for name, want in tensors.items():
        # Gemma's HF norms went through w - 1 (the writer) and + 1 (the importer) in float32.
        np.testing.assert_allclose(h.tensors[name], want, rtol=0, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(g.tensors[name], want, err_msg=name)


def test_hf_gemma_norms_are_folded_exactly(tmp_path):
    cfg = family_config("gemma3")
    tensors = tiny_weights(cfg, seed=3)
    # Weights that are exact in bfloat16 and whose 1 + w is exact in float32, as in a real checkpoint.
    tensors = {k: np.round(v * 64) / 64 if k.endswith("norm.weight") else v for k, v in tensors.items()}
    model = load_model(write_hf_dir(tmp_path / "hf", cfg, tensors, bf16=True))
    name = "blk.1.post_ffw_norm.weight"
    np.testing.assert_array_equal(model.tensors[name], tensors[name])


def test_gemma_softcapping_is_refused(tmp_path):
    import json

    cfg = family_config("gemma3")
    d = write_hf_dir(tmp_path / "hf", cfg, tiny_weights(cfg))
    j = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(j | {"final_logit_softcapping": 30.0}))
    with pytest.raises(ValueError, match="final_logit_softcapping is set"):
        load_model(d)


def test_missing_qk_norm_is_named(tmp_path):
    cfg = family_config("qwen3")
    tensors = tiny_weights(cfg)
    del tensors["blk.1.attn_k_norm.weight"]
    with pytest.raises(ValueError, match=r"missing weight model.layers.1.self_attn.k_norm.weight"):
        load_model(write_hf_dir(tmp_path / "hf", cfg, tensors))


# ---- engine vs reference ---------------------------------------------------------------------
def assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < LOGIT_RTOL, f"engine logits differ from numpy by {err:.4f} of the logit range"
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.8


def test_engine_matches_reference(family):
    cfg, tensors, _, hf = family
    ref = forward(Weights(hf.config, dequantised(hf.config, hf.tensors)), IDS, dtype=np.float64)
    got = build(hf.config, hf.tensors).eval(IDS)
    assert_close(got, ref)


def test_longrope_past_the_original_context():
    """Phi-3: one eval whose positions pass the original context rotates every token with the
    long factors (as HF's Phi3LongRoPEScaledRotaryEmbedding does for the whole sequence), in
    the numpy reference and the engine alike, whatever the prefill chunk; within it, the short."""
    cfg = family_config("phi3")
    w = tiny_weights(cfg, seed=6)
    ids = (IDS * 3)[:40]
    deq = Weights(cfg, dequantised(cfg, w))
    short, long = forward(deq, ids[:ORIGINAL], dtype=np.float64), forward(deq, ids, dtype=np.float64)
    # The factors matter: the first positions' logits change once the sequence is long.
    assert np.abs(long[:ORIGINAL] - short).max() > 1e-2 * np.abs(short).max()
    only_short = ModelConfig(
        **{**cfg.__dict__, "rope_scaling": {"type": "freq_factors", "factors": cfg.rope_scaling["factors"]}}
    )
    np.testing.assert_array_equal(
        short, forward(Weights(only_short, deq.tensors), ids[:ORIGINAL], dtype=np.float64)
    )
    for chunk in (64, 8, 1):
        m = build(cfg, w, prefill_chunk=chunk)
        assert_close(m.eval(ids), long)
        assert_close(m.eval(ids[:ORIGINAL]), short)
    # Decoding past the original context: the new tokens take the long factors, the cached keys
    # keep the short ones (HF's generate with a cache does the same), so a token's logits differ
    # from the short-only engine's once it is past the original context.
    e, e_short = (
        _engine(cfg, pack_tensors(cfg, w, bits=4, group_size=32)),
        _engine(only_short, pack_tensors(cfg, w, bits=4, group_size=32)),
    )
    arr = np.array(ids, np.int32)
    for eng in (e, e_short):
        eng.eval(arr[:ORIGINAL], 0)
    np.testing.assert_array_equal(
        e.eval(arr[ORIGINAL - 1 : ORIGINAL], ORIGINAL - 1),
        e_short.eval(arr[ORIGINAL - 1 : ORIGINAL], ORIGINAL - 1),
    )
    assert (
        np.abs(
            e.eval(arr[ORIGINAL : ORIGINAL + 1], ORIGINAL)
            - e_short.eval(arr[ORIGINAL : ORIGINAL + 1], ORIGINAL)
        ).max()
        > 1e-4
    )


def test_longrope_perplexity_blocks_use_the_whole_windows_factors():
    """eval_tail (perplexity) evaluates a window in blocks; each block rotates with the factors
    of the whole window, so the logits are those of one call over it, even where the first
    blocks end inside the original context."""
    cfg = family_config("phi3")
    w = tiny_weights(cfg, seed=6)
    ids = (IDS * 3)[: ORIGINAL + 8]
    m = build(cfg, w)
    m._engine.matmul_path = "lut"  # the same kernels for a block as for the whole call
    whole = m.eval(ids)
    tail = np.concatenate(list(m.eval_tail(ids, first=4, block=5)))
    np.testing.assert_array_equal(tail, whole[4:])
    # Blocks deciding by their own end would differ before the original context.
    e = m._engine
    e.reset()
    own = e.eval(np.array(ids[: ORIGINAL - 2], np.int32), 0, all_logits=True)
    assert np.abs(own[4:] - whole[4 : ORIGINAL - 2]).max() > 1e-3


def test_longrope_prompt_cache_keeps_only_keys_of_the_same_factors():
    """A prompt that shares a prefix with the cache reuses it only where a fresh evaluation
    would rotate the keys the same way: after a prompt past the original context (long
    factors), a shorter prompt with the same start is evaluated from 0 again, and the
    other way round; two prompts past it share their prefix. A KV snapshot carries the
    factors, so a conversation saved and restored (the prompt cache) still shares it."""
    cfg = family_config("phi3")
    w = tiny_weights(cfg, seed=6)
    ids = (IDS * 3)[:40]
    short, long, longer = ids[: ORIGINAL - 2], ids[: ORIGINAL + 6], ids[: ORIGINAL + 12]

    def cache_after(*prompts: list[int]) -> np.ndarray:
        m = build(cfg, w)
        # The LUT kernels give every token the same result in a call of 1 or of many tokens
        # (the int8 prefill quantises activations per call), so a reused key equals a fresh one.
        m._engine.matmul_path = "lut"
        for p in prompts:
            m.generate(p, max_tokens=1, temperature=0.0)
        e = m._engine
        assert e.n_past == len(prompts[-1])
        blob = e.kv_snapshot()  # the keys, then one factor byte per position
        want = 1 if len(prompts[-1]) > ORIGINAL else 0
        assert list(blob[len(blob) - e.n_past :]) == [want] * e.n_past
        return np.frombuffer(blob[: len(blob) - e.n_past], np.float32)

    fresh_short, fresh_long = cache_after(short), cache_after(long)
    np.testing.assert_array_equal(cache_after(long, short), fresh_short)
    np.testing.assert_array_equal(cache_after(short, long), fresh_long)
    # The same factors: the prefix is reused, and the cache is the fresh one.
    np.testing.assert_array_equal(cache_after(longer, long), fresh_long)

    e = build(cfg, w)._engine
    e.eval(np.array(long, np.int32), 0)
    assert e.reusable_prefix(len(short), len(short)) == 0  # long keys, short call
    assert e.reusable_prefix(len(short), len(longer)) == len(short)
    saved = e.kv_snapshot()
    e.reset()
    e.eval(np.array(short, np.int32), 0)  # another conversation, short factors
    e.kv_restore(saved, len(long))  # the restored keys keep their factors
    assert e.reusable_prefix(len(short), len(longer)) == len(short)
    assert e.reusable_prefix(len(short), len(short)) == 0
    with pytest.raises(ValueError, match="not a snapshot"):
        e.kv_restore(saved[:-1], len(long))
    bad = bytearray(saved)
    bad[-1] = 7
    with pytest.raises(ValueError, match="factor record is corrupt"):
        e.kv_restore(bytes(bad), len(long))
    assert e.reusable_prefix(len(short), len(longer)) == len(short)  # a refused restore changed nothing
    # Through the Model's prompt cache: a long conversation, another one, then the first
    # again with more: its saved keys come back with their factors and are reused.
    m = build(cfg, w, prefill_chunk=4)
    m.prompt_cache_bytes = 1 << 20
    for p in (long, long[::-1], longer):
        m.generate(p, max_tokens=1, temperature=0.0)
    assert m.stats.cached_tokens >= len(long)
    with pytest.raises(ValueError, match="reusable_prefix"):
        e.reusable_prefix(e.n_past + 1, e.n_past + 1)
    # Without LongRoPE every prefix is reusable.
    q = build(family_config("qwen3"), tiny_weights(family_config("qwen3"), seed=6))._engine
    q.eval(np.array(long, np.int32), 0)
    assert q.reusable_prefix(len(short), len(short)) == len(short)


def test_reference_window_matters():
    """The sliding window, the local RoPE base and the query scale all change the logits."""
    cfg = family_config("gemma3")
    w = tiny_weights(cfg, seed=5)
    base = forward(Weights(cfg, w), IDS)
    for change in ({"sliding_window": 64}, {"rope_local_theta": 1e6}, {"attn_scale": 0.0}):
        other = forward(Weights(ModelConfig(**{**cfg.__dict__, **change}), w), IDS)
        assert np.abs(other - base).max() > 1e-3, change


def _engine(cfg: ModelConfig, packed: dict, **kw) -> _core.Engine:
    kw.setdefault("n_ctx", 64)
    return _core.Engine(engine_config(cfg), packed, n_threads=1, kv_type="f32", **kw)


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_ring_equals_full_cache_with_window_mask(chunk):
    cfg = family_config("gemma3")
    packed = pack_tensors(cfg, tiny_weights(cfg, seed=7), bits=4, group_size=32)
    ids = np.array((IDS * 3)[:40], np.int32)  # 8 windows long
    ring = _engine(cfg, packed, prefill_chunk=chunk)
    full = _engine(cfg, packed, prefill_chunk=chunk, swa_full_cache=True)
    assert ring.kv_bytes < full.kv_bytes  # the sliding layers hold window + chunk - 1 (+ mirror) rows
    np.testing.assert_array_equal(ring.eval(ids, 0, all_logits=True), full.eval(ids, 0, all_logits=True))
    # Decode one token at a time past the ring's wrap: still the same.
    ring.reset()
    full.reset()
    for i in range(len(ids)):
        np.testing.assert_array_equal(ring.eval(ids[i : i + 1], i), full.eval(ids[i : i + 1], i))


def test_ring_forgets_what_it_overwrote():
    cfg = family_config("gemma3")
    packed = pack_tensors(cfg, tiny_weights(cfg, seed=7), bits=4, group_size=32)
    e = _engine(cfg, packed, prefill_chunk=2)  # ring of WINDOW + 1 positions
    ids = np.array(IDS, np.int32)
    e.eval(ids, 0)
    e.truncate(len(IDS) - 1)  # the window before it is still there
    assert e.n_past == len(IDS) - 1
    e.truncate(4)  # positions 0..3 were overwritten long ago: nothing can be kept
    assert e.n_past == 0
    e.eval(ids, 0)
    with pytest.raises(ValueError, match="ring no longer holds"):
        e.eval(ids[:1], 3)


def test_model_prefix_reuse_with_ring():
    cfg = family_config("gemma3")
    m = build(cfg, tiny_weights(cfg, seed=2), prefill_chunk=4)
    fresh = build(cfg, tiny_weights(cfg, seed=2), prefill_chunk=4)
    a = m.generate(IDS, max_tokens=6, temperature=0.0)
    # Going back to an early prefix: the ring lost it, so the model starts over (and still agrees).
    b = m.generate(IDS[:6], max_tokens=6, temperature=0.0)
    assert m.stats.cached_tokens == 0
    assert b == fresh.generate(IDS[:6], max_tokens=6, temperature=0.0)
    assert a == fresh.generate(IDS, max_tokens=6, temperature=0.0)


# ---- model file, paging, sharding ------------------------------------------------------------
def test_model_file_paging_and_flags_round_trip(family, tmp_path: Path):
    from edgelut.models.modelfile import read_model_file
    from edgelut.quantize.convert import convert
    from edgelut.quantize.recipe import Recipe

    cfg, _, g, _ = family
    path = convert(g, tmp_path / "m.elut", Recipe(method="rtn", qtype="q4", group_size=32), progress=False)
    mf = read_model_file(path)
    back = mf.config
    flags = ("qk_norm", "post_norms", "ffn_act", "sliding_window", "sliding_window_pattern")
    flags += ("rope_local_theta",)
    for field in flags:
        assert getattr(back, field) == getattr(g.config, field), field
    assert back.embed_scale == pytest.approx(g.config.embed_scale)
    whole = _core.Engine.from_file(str(path), n_ctx=64, n_threads=1, kv_type="f32").eval(
        np.array(IDS, np.int32), 0, all_logits=True
    )
    stored = {k: v if isinstance(v, np.ndarray) else v.dequantize() for k, v in mf.tensors().items()}
    assert_close(whole, forward(Weights(back, stored), IDS, dtype=np.float64))
    paged = _core.Engine.from_file(str(path), n_ctx=64, n_threads=1, kv_type="f32", window=1)
    got = paged.eval(np.array(IDS, np.int32), 0, all_logits=True)
    np.testing.assert_allclose(got, whole, rtol=1e-6, atol=1e-6)


def test_sharded_equals_unsharded(family):
    cfg, tensors, _, _ = family
    cfg = ModelConfig(**{**cfg.__dict__, "n_kv_heads": 2})  # two kv heads to split
    tensors = tiny_weights(cfg, seed=4)
    whole = build(cfg, tensors).eval(IDS)
    half = cfg.n_heads // 2  # the q heads of one kv head
    specs = [_core.ShardSpec(0, half, 0, 64), _core.ShardSpec(half, cfg.n_heads, 64, 96)]
    comms = _core.make_local_group(2)
    models = [build(cfg, tensors, shard=s, communicator=c) for s, c in zip(specs, comms, strict=True)]
    out: list = [None, None]

    def work(i: int) -> None:
        out[i] = models[i].eval(IDS)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in out:
        # The all-reduce adds the partial sums in another order than one device does (~1e-6
        # apart); a value that then lands on the other side of a rounding boundary of a later
        # layer's int8 activation table moves its position by a table step (phi3 past its
        # original context, seed 4: position 5 by 0.3% of the logit range, the rest by 1e-6).
        moved = np.abs(got - whole).max(axis=-1) > 1e-4
        assert moved.sum() <= 1, np.flatnonzero(moved)
        assert_close(got, whole)


def test_engine_config_refuses_bad_switches():
    c = engine_config(family_config("gemma3"))
    c.sliding_window = -1
    with pytest.raises(ValueError, match="sliding_window"):
        c.validate()
    with pytest.raises(ValueError, match="ffn_act"):
        ModelConfig(**{**family_config("qwen3").__dict__, "ffn_act": "relu"})


def test_llama32_style_end_to_end(tmp_path: Path):
    """Llama 3.2 shape: tied embeddings, llama3 RoPE factors as rope_freqs.weight, the llama-bpe
    pre-tokenizer; GGUF -> model file -> engine, against the reference."""
    from tokenizers import Tokenizer as HFTokenizer

    from edgelut.models.modelfile import read_model_file
    from edgelut.quantize.convert import convert
    from edgelut.quantize.recipe import Recipe

    cfg = tiny_config("llama", n_kv_heads=2, tie_embeddings=True, rope_theta=500000.0)
    tensors = tiny_weights(cfg, seed=9)
    factors = np.array([1, 1, 1, 1, 1.5, 3, 8, 8], np.float32)  # head_dim 16 -> 8 frequencies
    with_freqs = {**tensors, "rope_freqs.weight": factors}
    gguf_path = write_gguf(tmp_path / "l32.gguf", cfg, with_freqs, pre="llama-bpe")
    model = load_model(gguf_path)
    assert model.config.tie_embeddings and model.config.rope_scaling["type"] == "freq_factors"
    assert model.config.rope_scaling["factors"] == factors.tolist()
    # The llama3 (tiktoken-style) pre-tokenizer splits digits in runs of at most three.
    pre = HFTokenizer.from_str(model.tokenizer.tokenizer_json).pre_tokenizer
    assert [p for p, _ in pre.pre_tokenize_str("year 20251")] == ["year", "Ġ", "202", "51"]
    recipe = Recipe(method="rtn", qtype="q4", group_size=32)
    path = convert(model, tmp_path / "l32.elut", recipe, progress=False)
    mf = read_model_file(path)
    stored = {k: v if isinstance(v, np.ndarray) else v.dequantize() for k, v in mf.tensors().items()}
    got = _core.Engine.from_file(str(path), n_ctx=64, n_threads=1, kv_type="f32").eval(
        np.array(IDS, np.int32), 0, all_logits=True
    )
    assert_close(got, forward(Weights(mf.config, stored), IDS, dtype=np.float64))


@pytest.mark.parametrize("kv_type", ["f32", "q8"])
def test_kv_snapshot_restores_a_ring_exactly(kv_type):
    # A saved conversation on Gemma's rings: restoring the ring and its position
    # map continues exactly as if the other conversation never ran.
    cfg = family_config("gemma3")
    packed = pack_tensors(cfg, tiny_weights(cfg, seed=7), bits=4, group_size=32)
    a, b = np.array((IDS * 2)[:30], np.int32), np.array(IDS[::-1], np.int32)
    e = _core.Engine(engine_config(cfg), packed, n_threads=1, kv_type=kv_type, n_ctx=64, prefill_chunk=4)
    e.eval(a, 0)
    saved = e.kv_snapshot()
    want = e.eval(a[:3], len(a))
    e.reset()
    e.eval(b, 0)  # another conversation overwrites every ring row
    e.kv_restore(saved, len(a))
    assert e.n_past == len(a)
    np.testing.assert_array_equal(e.eval(a[:3], len(a)), want)
    with pytest.raises(ValueError, match="not a snapshot of 29 positions"):
        e.kv_restore(saved, len(a) - 1)


@pytest.mark.parametrize(
    ("n_layers", "hidden", "n_heads", "head_dim", "scale"),
    [
        (18, 640, 4, 256, 256**-0.5),  # Gemma 3 270M: the head size
        (62, 5376, 32, 128, 168**-0.5),  # Gemma 3 27B: query_pre_attn_scalar = hidden / heads
    ],
)
def test_gemma3_gguf_query_scale_follows_the_model_size(
    n_layers: int, hidden: int, n_heads: int, head_dim: int, scale: float
) -> None:
    # Gemma 3 GGUFs carry no query_pre_attn_scalar; config.json's value is known by the size.
    a = "gemma3."
    values = {
        "general.architecture": "gemma3",
        a + "embedding_length": hidden,
        a + "attention.head_count": n_heads,
        a + "attention.head_count_kv": n_heads // 2,
        a + "attention.key_length": head_dim,
        a + "feed_forward_length": 4 * hidden,
        a + "block_count": n_layers,
        a + "attention.layer_norm_rms_epsilon": 1e-6,
        a + "context_length": 32768,
    }
    meta = Metadata(Path("gemma.gguf"), values, {})
    cfg = config_from_metadata(meta, Path("gemma.gguf"), 262144, tied=True, bias=False)
    assert cfg.query_scale == pytest.approx(scale)
