"""Memory that holds: a streaming conversion's peak RSS, and --memory-budget under a hard
cgroup limit (a run that honours its budget is not killed; one that cannot says so up front)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cgroup_limit import available, run_limited
from model_fixtures import tiny_config, tiny_weights, write_gguf, write_hf_dir, write_onnx

from edgelut import cache

MIB = 1 << 20


def _child_peak(script: str, env: dict[str, str] | None = None) -> int:
    """Peak RSS (bytes) of a python child running script, measured inside it (VmHWM)."""
    code = script + "\nprint(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return int(r.stdout.strip().splitlines()[-1]) * 1024


# ---- streaming conversion ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_quantize_streams_a_model_larger_than_its_peak(tmp_path, kind) -> None:
    """A 201 MB float32 model, as a GGUF or a HF safetensors directory, converts with a peak of
    import overhead plus far less than the model."""
    # A wide embedding (the largest tensor, as in real models): 16384 rows, ids past the
    # tokenizer's 260 unused.
    shape = dict(hidden_size=1024, intermediate_size=4096, n_layers=3, n_heads=8, head_dim=128)
    shape["vocab_size"] = 16384
    cfg = tiny_config("qwen2", attn_bias=True, tie_embeddings=True, **shape)
    weights = tiny_weights(cfg)
    if kind == "gguf":
        src = write_gguf(tmp_path / "big.gguf", cfg, weights)
    else:  # two float32 shards; the importer reads rows with pread (it read every tensor whole before)
        src = write_hf_dir(tmp_path / "big", cfg, weights)
    float_bytes = sum(w.nbytes for w in weights.values())
    del weights
    assert float_bytes > 190 * MIB
    out = tmp_path / "big.elut"
    # What the converter costs by itself: its imports and the numba JIT of the RTN kernel.
    baseline = _child_peak(
        "import numpy as np, tqdm, edgelut.cli.quantize, edgelut.models.modelfile\n"
        "from edgelut.quantize.convert import quantize_tensor\n"
        "from edgelut.quantize.recipe import TensorSpec\n"
        "quantize_tensor('w', np.ones((64, 64), np.float32), TensorSpec('q4', 32, True), 'rtn')"
    )
    script = f"""
from edgelut.cli import main
assert main(["quantize", {str(src)!r}, "-o", {str(out)!r}, "-q"]) == 0
"""
    peak = _child_peak(script)
    assert out.is_file()
    # One row block (4 Mi weights), its quantiser's temporaries and one packed tensor at a time;
    # the in-memory converter this replaced held the whole float model (> float_bytes).
    # (Measured: 53 MiB over the baseline for this 238 MiB model.)
    assert peak - baseline < 80 * MIB, (peak / MIB, baseline / MIB, float_bytes / MIB)
    assert peak - baseline < float_bytes / 2


def _rtn_baseline(imports: str = "") -> int:
    """Peak RSS of the converter's imports and the numba JIT of the RTN kernel (no model)."""
    return _child_peak(
        f"import numpy as np, tqdm, edgelut.cli.quantize, edgelut.models.modelfile{imports}\n"
        "from edgelut.quantize.convert import quantize_tensor\n"
        "from edgelut.quantize.recipe import TensorSpec\n"
        "quantize_tensor('w', np.ones((64, 64), np.float32), TensorSpec('q4', 32, True), 'rtn')"
    )


def _quantize_peak(src: Path, out: Path) -> int:
    args = ["quantize", str(src), "-o", str(out), "-q"]
    peak = _child_peak(f"from edgelut.cli import main\nassert main({args!r}) == 0")
    assert out.is_file()
    return peak


@pytest.mark.parametrize("external", [True, False], ids=["external", "inline"])
def test_onnx_quantize_streams(tmp_path, external) -> None:
    """A 244 MiB float32 ONNX export (an untied head stored as W^T), its weights in an external
    data file or inline in the graph, converts with a peak far below the model: rows are read
    from the file when quantised (W^T a band of columns at a time), the graph is parsed
    without its raw weights, and the tied-head check stops at the first block that differs."""
    shape = dict(hidden_size=1024, intermediate_size=4096, n_layers=2, n_heads=8, head_dim=128)
    cfg = tiny_config("qwen2", attn_bias=True, tie_embeddings=False, vocab_size=16384, **shape)
    weights = tiny_weights(cfg)
    src = write_onnx(tmp_path / "big", cfg, weights, external=external)
    float_bytes = sum(w.nbytes for w in weights.values())
    del weights
    assert float_bytes > 240 * MIB
    baseline = _rtn_baseline(", onnx")
    peak = _quantize_peak(src, tmp_path / "big.elut")
    # Measured: 67-74 MiB over the baseline, either layout (one 16 MiB block of rows of the W^T
    # head, its quantiser's temporaries, the parsed graph); main's eager import, which held
    # every initializer as float32 with its transposes: 482 MiB.
    assert peak - baseline < 100 * MIB, (peak / MIB, baseline / MIB, float_bytes / MIB)


@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_phi3_fused_parts_read_only_their_rows(tmp_path, kind) -> None:
    """Phi-3's fused qkv and gate_up split into lazy parts: each part reads its own rows of the
    fused tensor (same values as slicing it whole) and the conversion holds none of them whole."""
    from edgelut.models.importers import load_model
    from edgelut.models.lazy import LazyTensors, RowSource, tensor_rows

    shape = dict(hidden_size=1024, intermediate_size=4096, n_layers=3, n_heads=8, n_kv_heads=8, head_dim=128)
    cfg = tiny_config("phi3", tie_embeddings=True, vocab_size=4096, **shape)
    weights = tiny_weights(cfg)
    src = (
        write_gguf(tmp_path / "phi.gguf", cfg, weights)
        if kind == "gguf"
        else write_hf_dir(tmp_path / "phi", cfg, weights)
    )
    m = load_model(src)
    assert isinstance(m.tensors, LazyTensors) and "blk.0.attn_qkv.weight" not in m.tensors
    for name in (
        "blk.1.attn_q.weight",
        "blk.1.attn_k.weight",
        "blk.1.attn_v.weight",
        "blk.2.ffn_gate.weight",
        "blk.2.ffn_up.weight",
    ):
        assert isinstance(m.tensors.source(name), RowSource), name
        np.testing.assert_array_equal(m.tensors[name], weights[name], err_msg=name)
        np.testing.assert_array_equal(tensor_rows(m.tensors, name, 5, 77), weights[name][5:77], err_msg=name)
    float_bytes = sum(w.nbytes for w in weights.values())
    del weights, m
    assert float_bytes > 140 * MIB
    baseline = _rtn_baseline()
    peak = _quantize_peak(src, tmp_path / "phi.elut")
    # Measured: 47-56 MiB over the baseline; main, which read each fused tensor whole and kept
    # its parts as arrays for the whole conversion (every qkv and gate_up), 178-189 MiB.
    assert peak - baseline < 75 * MIB, (peak / MIB, baseline / MIB, float_bytes / MIB)


def test_gptq_quantize_holds_one_float32_hessian_at_a_time(tmp_path) -> None:
    """GPTQ's peak is about one float32 K x K Hessian (64 MiB for ffn_down's K = 4096 here), which
    becomes its own factor in place. The float64 code this replaced held the Hessian, its
    reversed damped copy, numpy cholesky's work copy and result, and the contiguous factor at
    once: five K x K float64 arrays, 640 MiB."""
    shape = dict(hidden_size=256, intermediate_size=4096, n_layers=1, n_heads=4, head_dim=64)
    cfg = tiny_config("qwen2", attn_bias=True, tie_embeddings=True, **shape)
    src = write_gguf(tmp_path / "wide.gguf", cfg, tiny_weights(cfg))
    out = tmp_path / "wide.elut"
    text = tmp_path / "calib.txt"  # short: tokenising the built-in set would dominate the test's time
    text.write_text("the quick brown fox jumps over the lazy dog; " * 40)
    # Everything but the quantisation: imports, the JIT of the RTN kernel GPTQ's group fit uses,
    # the import of the model and the tokenisation of the calibration text.
    baseline = _child_peak(
        "import numpy as np, tqdm, edgelut.cli.quantize, edgelut.models.modelfile\n"
        "from edgelut.quantize.calibrate import calibration_ids\n"
        "from edgelut.quantize.convert import load_source, quantize_tensor\n"
        "from edgelut.quantize.gptq import hessian\n"
        "from edgelut.quantize.recipe import TensorSpec\n"
        "h = hessian(np.random.default_rng(0).standard_normal((128, 64)))\n"
        "quantize_tensor('w', np.ones((64, 64), np.float32), TensorSpec('q4', 32, True), 'gptq', h=h)\n"
        f"m = load_source({str(src)!r})\n"
        f"ids = calibration_ids(m.tokenizer.tokenizer_json, {text.read_text()!r}, seq_len=128, n_seqs=2)"
    )
    script = f"""
from edgelut.cli import main
args = ["quantize", {str(src)!r}, "-o", {str(out)!r}, "-q", "--method", "gptq", "--calib", {str(text)!r}]
args += ["--calib-tokens", "256"]
assert main(args) == 0
"""
    peak = _child_peak(script)
    assert out.is_file()
    # Measured: 97 MiB over the baseline (the Hessian's 64 MiB, the FFN's activations, one
    # tensor's GPTQ work arrays); main before this change: 569 MiB.
    k2 = 4096 * 4096 * 4
    assert peak - baseline < 2.5 * k2, (peak / MIB, baseline / MIB)


def test_row_blocks_give_the_same_bytes_as_the_whole_matrix(rng) -> None:
    from edgelut.quantize import convert
    from edgelut.quantize.recipe import TensorSpec

    w = rng.standard_normal((1000, 256)).astype(np.float32)
    for spec in (TensorSpec("q4", 32, True), TensorSpec("q3", 64, True), TensorSpec("tq", 32, False)):
        whole = convert.quantize_tensor("blk.0.ffn_up.weight", w, spec, "rtn")
        old = convert.ROW_BLOCK_WEIGHTS
        try:
            convert.ROW_BLOCK_WEIGHTS = 192 * 256  # blocks of 192 rows, and a short last one
            blocked = convert.quantize_rows(
                "blk.0.ffn_up.weight", {"blk.0.ffn_up.weight": w}, spec, "rtn", {}
            )
        finally:
            convert.ROW_BLOCK_WEIGHTS = old
        assert np.asarray(blocked.data).tobytes() == np.asarray(whole.data).tobytes(), spec


# ---- --memory-budget under a hard limit -------------------------------------------------------

REASON = available()
needs_cgroup = pytest.mark.skipif(bool(REASON), reason=f"cgroup v1 memory limit unavailable: {REASON}")


@pytest.fixture(scope="module")
def smol_file() -> Path:
    return cache.default_model_file()


def _run(model: Path) -> list[str]:
    return [sys.executable, "-m", "edgelut.cli", "run", str(model), "-p", "The capital of France is"]


@needs_cgroup
def test_budget_run_finishes_inside_a_limit_of_the_budget(smol_file) -> None:
    # Margin 0: the limit is the budget itself. The run pages (window < n_layers) to fit.
    for budget_mib in (200, 240):
        cmd = [
            *_run(smol_file),
            "-n",
            "8",
            "--temp",
            "0",
            "--memory-budget",
            f"{budget_mib}M",
            "--drop-cache",
        ]
        r, stats = run_limited(cmd, budget_mib * MIB)
        assert r.returncode == 0, (budget_mib, r.stderr[-1000:], stats)
        assert "Paris" in r.stdout and stats.get("oom_kill", 0) == 0
        assert stats["max_usage"] <= budget_mib * MIB


@needs_cgroup
def test_the_limit_is_real(smol_file) -> None:
    # Control: the same run without a budget under a limit below its need is killed (it used
    # 83 MiB of the cgroup after the tokenizer stopped holding its JSON and build heap, 90+ before).
    cmd = [*_run(smol_file), "-n", "8", "--temp", "0"]
    r, stats = run_limited(cmd, 64 * MIB)
    assert r.returncode != 0 and stats.get("oom_kill", 0) >= 1, (r.returncode, stats)


def test_budget_below_the_minimum_is_refused_up_front(smol_file) -> None:
    r = subprocess.run(
        [*_run(smol_file), "-n", "4", "--memory-budget", "120M"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2 and r.stdout == ""
    line = r.stderr.strip()
    assert "\n" not in line and "memory budget 120 MiB cannot be honoured" in line, line
    assert "the minimum is" in line and "measured at start-up" in line


def test_budget_keeps_peak_rss_under_it(smol_file) -> None:
    # Without a cgroup too: the process's own high-water mark stays within the budget.
    env = {**os.environ}
    script = f"""
import edgelut
m = edgelut.load({str(smol_file)!r}, n_ctx=512, memory_budget=170 << 20, drop_cache=True)
assert 0 < m.engine.window < m.config.n_layers, m.engine.window
m.generate("The capital of France is", max_tokens=8, temperature=0.0)
"""
    # 170 MiB pages (window 25 of 30; measured peak 141 MiB). 200 MiB, the budget here before
    # the tokenizer stopped holding its JSON and build heap, now holds every layer.
    assert _child_peak(script, env) <= 170 * MIB


# ---- perplexity holds a block of logits, not a window -----------------------------------------


def test_perplexity_scores_blocks_of_logits_with_the_whole_window_result(smol_file, tmp_path, capsys) -> None:
    import math

    import edgelut
    from edgelut.cli import main
    from edgelut.cli.perplexity import log_softmax
    from edgelut.models.datasets import lee_text

    text = lee_text()[:20000]
    path = tmp_path / "t.txt"
    path.write_text(text)
    m = edgelut.load(str(smol_file), n_ctx=256, n_threads=2)
    ids = m.tokenize(text, add_special=False)
    blocks = [b.shape for b in m.eval_tail(ids[:256], 128, block=48)]
    assert blocks == [(48, m.config.vocab_size)] * 2 + [(32, m.config.vocab_size)]
    nll, count = 0.0, 0
    for w in range(2):  # what the command used to compute from a whole window of logits
        window = ids[w * 256 : (w + 1) * 256]
        m.reset()
        lp = log_softmax(m.eval(window).astype(np.float64))
        targets = np.asarray(window[129:])
        nll -= lp[np.arange(128, 255), targets].sum()
        count += len(targets)
    assert main(["perplexity", str(smol_file), str(path), "--ctx", "256", "--chunks", "2", "-t", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.startswith(f"perplexity: {math.exp(nll / count):.4f} over {count} tokens"), out


# ---- a large vocabulary: a load holds the tokenizer, not its JSON or the heap that built it ----


def spm_vocabulary(letters: str = "abcdefghijklmnop") -> tuple[list[str], list[int], list[float]]:
    """A SentencePiece-style vocabulary (tokens, llama.cpp token types, scores): 3000 control
    tokens as in Gemma 3, the 256 byte tokens and every string of 1 to 4 letters, whose splits
    are merges (73,164 tokens, 205,056 merges for 16 letters)."""
    import itertools

    tokens = ["<unk>", "<s>", "</s>"] + [f"<unused{i}>" for i in range(3000)]
    types = [2, 3, 3] + [3] * 3000
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    pieces = ["\u2581"] + ["".join(p) for n in (1, 2, 3, 4) for p in itertools.product(letters, repeat=n)]
    scores = [0.0] * len(tokens) + [-float(i) for i in range(len(pieces))]
    return tokens + pieces, types + [1] * len(pieces), scores


@pytest.fixture(scope="module")
def big_vocab_file(tmp_path_factory) -> Path:
    from mfile_helpers import tiny_model

    from edgelut.kernels import pack
    from edgelut.models.config import TokenizerData
    from edgelut.models.modelfile import write_model_file
    from edgelut.quantize.rtn import quantize_rtn
    from edgelut.tokenizer import tokenizer_json_from_gguf_vocab

    tokens, types, scores = spm_vocabulary()
    text = tokenizer_json_from_gguf_vocab(
        model="llama", tokens=tokens, token_types=types, scores=scores, bos_id=1, unk_id=0, add_bos=True
    )
    m = tiny_model(hidden=64, inter=128, layers=1, heads=2, kv_heads=1, vocab=len(tokens), tie=True)
    tensors = {
        n: pack(*quantize_rtn(a, "q4", 32, asym=True), "q4", 32) if a.ndim == 2 else a
        for n, a in m.tensors.items()
    }
    tok = TokenizerData(text, bos_token="<s>", eos_token="</s>", add_bos=True)
    return write_model_file(tmp_path_factory.mktemp("vocab") / "big-vocab.elut", m.config, tok, tensors)


def test_a_large_vocabulary_costs_its_tokenizer_only(big_vocab_file) -> None:
    """Loading a model of a 73k-token, 205k-merge vocabulary (and a 6 MB file) and generating,
    over the imports: measured 40 MiB after the load and 62 MiB at the peak; 51 MiB after when
    the heap that built the tokenizer is not given back (no malloc_trim); 139 MiB at the peak
    when the file stores its merges as pairs of strings; 69 / 150 MiB on main before, which
    also held the JSON text as a str (Gemma 3 270M: 640 -> 348 MiB, docs/BENCHMARKS.md)."""
    script = f"""
import edgelut, edgelut.model, edgelut.tokenizer
def status(key):
    return int(open('/proc/self/status').read().split(key + ':')[1].split()[0]) * 1024
base = status('VmRSS')
m = edgelut.load({str(big_vocab_file)!r}, n_ctx=256)
assert m.tokenize('abcd ponm', add_special=False) == m.tokenizer.encode('abcd ponm', add_special=False)
m.generate('abc abcd', max_tokens=2, temperature=0.0)
print(status('VmRSS') - base, status('VmHWM') - base)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    after, peak = (int(x) for x in r.stdout.split())
    assert after < 46 * MIB, (after / MIB, peak / MIB)
    assert peak < 100 * MIB, (after / MIB, peak / MIB)


def test_gptq_row_blocks_give_the_same_bytes_as_the_whole_matrix(rng) -> None:
    # The head of a large vocabulary is GPTQ-quantised a block of rows at a time
    # (quantize/calibrate.py hands it over as None): GPTQ carries each row's error
    # only along that row, so the blocks must equal the whole matrix exactly.
    from edgelut.quantize import convert
    from edgelut.quantize.recipe import TensorSpec

    w = rng.standard_normal((1000, 256)).astype(np.float32)
    x = rng.standard_normal((512, 256)).astype(np.float32)
    h = 2.0 * (x.T @ x).astype(np.float32)
    for spec, act_order in ((TensorSpec("q4", 32, True), False), (TensorSpec("q3", 64, True), True)):
        whole = convert.quantize_tensor("output.weight", w, spec, "gptq", h=h.copy(), act_order=act_order)
        old = convert.ROW_BLOCK_WEIGHTS
        try:
            convert.ROW_BLOCK_WEIGHTS = 192 * 256  # blocks of 192 rows, and a short last one
            blocked = convert.quantize_rows(
                "output.weight", {"output.weight": w}, spec, "gptq", {}, h=h.copy(), act_order=act_order
            )
        finally:
            convert.ROW_BLOCK_WEIGHTS = old
        assert np.asarray(blocked.data).tobytes() == np.asarray(whole.data).tobytes(), spec
