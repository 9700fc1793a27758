"""The engine over a model file, with its layers paged through a window of W slots.

Paging changes where the bytes sit, never what is computed: logits must be
bit-identical to the resident engine for every window.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mfile_helpers import load_smollm2, tiny_model

from edgelut import _core
from edgelut.model import engine_config, pack_tensors
from edgelut.models.modelfile import read_model_file, write_model_file

N_LAYERS = 6


@pytest.fixture(scope="module")
def model_dir() -> Iterator[Path]:
    # Disk-backed (not a tmpfs), so drop_cache and O_DIRECT do what they say.
    base = "/var/tmp" if os.path.isdir("/var/tmp") else None
    d = Path(tempfile.mkdtemp(prefix="edgelut-paged-", dir=base))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_file(model_dir: Path) -> tuple[Path, dict, object]:
    m = tiny_model(layers=N_LAYERS, hidden=128, inter=192, seed=3)
    packed = pack_tensors(m.config, m.tensors, bits=4, group_size=32, clip_search=False)
    path = write_model_file(model_dir / "tiny.elut", m.config, m.tokenizer, packed)
    return path, packed, m.config


def layer_ranges(path: Path) -> list[tuple[int, int]]:
    with read_model_file(path, verify_crc=False) as mf:
        return list(mf.layer_ranges)


def run(engine: _core.Engine, prompt: list[int], decode: list[int]) -> np.ndarray:
    """Prefill logits of every prompt token, then one row per decoded token."""
    rows = [engine.eval(np.asarray(prompt, dtype=np.int32), 0, all_logits=True)]
    for i, tok in enumerate(decode):
        rows.append(engine.eval(np.asarray([tok], dtype=np.int32), len(prompt) + i)[None, :])
    return np.concatenate(rows)


PROMPT = [1, 5, 9, 14, 3, 7, 11]
DECODE = [4, 8, 2, 13, 6]


def test_file_engine_equals_dict_engine(tiny_file) -> None:
    """from_file binds the same bytes as the engine built from the packed tensors."""
    path, packed, cfg = tiny_file
    from_dict = _core.Engine(engine_config(cfg), packed, n_ctx=64, n_threads=1)
    from_file = _core.Engine.from_file(str(path), n_ctx=64, n_threads=1)
    assert from_file.window == 0 and from_file.pager_stats() is None
    assert np.array_equal(run(from_dict, PROMPT, DECODE), run(from_file, PROMPT, DECODE))


@pytest.mark.parametrize("window", [1, 2, 4, N_LAYERS])
@pytest.mark.parametrize("io", ["buffered", "drop_cache", "direct_io"])
def test_paged_logits_are_bit_identical(tiny_file, window: int, io: str) -> None:
    path = str(tiny_file[0])
    resident = run(_core.Engine.from_file(path, n_ctx=64, n_threads=1), PROMPT, DECODE)
    engine = _core.Engine.from_file(
        path,
        n_ctx=64,
        n_threads=2,
        window=window,
        drop_cache=io != "buffered",
        direct_io=io == "direct_io",
        prefill_chunk=3,  # several passes over the layers per prompt
    )
    assert engine.window == window
    assert np.array_equal(run(engine, PROMPT, DECODE), resident)


def test_load_a_model_file_with_a_window(tiny_file) -> None:
    import edgelut

    path = tiny_file[0]
    resident = edgelut.load(path, n_ctx=64, n_threads=1)
    paged = edgelut.load(path, n_ctx=64, n_threads=1, window=2, drop_cache=True)
    out = edgelut.load(path, n_ctx=64, n_threads=1, window=2, page_output=True)
    assert resident.engine.window == 0 and paged.engine.window == 2 and out.engine.window == 2
    assert np.array_equal(resident.eval(PROMPT), paged.eval(PROMPT))
    assert np.array_equal(resident.eval(PROMPT), out.eval(PROMPT))
    # Greedy text through the file's own tokenizer is the same too.
    text = [m.generate("the cat of a", max_tokens=6, temperature=0.0) for m in (resident, paged, out)]
    assert text[0] == text[1] == text[2]
    with pytest.raises(ValueError, match="page_output page the weights of an edgelut model file"):
        edgelut.load(object(), page_output=True)
    assert edgelut.load(path, n_ctx=64, memory_budget=1 << 40).engine.window == N_LAYERS


def test_paged_stats_count_one_read_per_layer_per_pass(tiny_file) -> None:
    path, _, _ = tiny_file
    sizes = [s for _, s in layer_ranges(path)]
    engine = _core.Engine.from_file(str(path), n_ctx=64, n_threads=1, window=2)
    engine.eval(np.asarray(PROMPT, dtype=np.int32), 0)  # one pass (chunk 64)
    engine.reset_pager_stats()
    passes = 4
    for i in range(passes):
        engine.eval(np.asarray([DECODE[i]], dtype=np.int32), len(PROMPT) + i)
    s = engine.pager_stats()
    assert s["acquires"] == passes * N_LAYERS
    # The loader runs ahead by at most the window, so the reads are the passes'
    # layers, give or take what was prefetched before and after.
    assert abs(s["reads"] - passes * N_LAYERS) <= 2
    assert s["slot_bytes"] == 2 * max(sizes)
    assert s["peak_resident_bytes"] <= 2 * max(sizes)
    resident = _core.Engine.from_file(str(path), n_ctx=64, n_threads=1, window=N_LAYERS)
    resident.reset_pager_stats()
    resident.eval(np.asarray(PROMPT, dtype=np.int32), 0)
    assert resident.pager_stats()["reads"] == 0


def test_budget_picks_the_window(tiny_file) -> None:
    path, _, _ = tiny_file
    sizes = [s for _, s in layer_ranges(path)]
    roomy = _core.Engine.from_file(str(path), n_ctx=64, budget_bytes=1 << 40)
    assert roomy.window == N_LAYERS
    with pytest.raises(ValueError, match=r"too small; the minimum is \d+ bytes"):
        _core.Engine.from_file(str(path), n_ctx=64, budget_bytes=max(sizes))
    # The minimum named by the error gives W = 1; two more slots give W = 3.
    with pytest.raises(ValueError) as err:
        _core.Engine.from_file(str(path), n_ctx=64, budget_bytes=1)
    minimum = int(str(err.value).split("the minimum is ")[1].split()[0])
    assert _core.Engine.from_file(str(path), n_ctx=64, budget_bytes=minimum).window == 1
    tight = _core.Engine.from_file(str(path), n_ctx=64, budget_bytes=minimum + 2 * max(sizes))
    assert tight.window == 3


def test_truncated_file_raises_from_eval(model_dir: Path, tiny_file) -> None:
    src, _, _ = tiny_file
    path = model_dir / "truncated.elut"
    shutil.copy(src, path)
    ranges = layer_ranges(path)
    engine = _core.Engine.from_file(str(path), n_ctx=64, n_threads=1, window=1, verify_crc=False)
    os.truncate(path, ranges[3][0] + 100)
    with pytest.raises(RuntimeError) as err:
        engine.eval(np.asarray(PROMPT, dtype=np.int32), 0)
    msg = str(err.value)
    assert "layer 3" in msg and str(path) in msg and "unexpected end of file" in msg


def test_corrupt_layer_is_refused_when_paging(model_dir: Path, tiny_file) -> None:
    src, _, _ = tiny_file
    path = model_dir / "corrupt.elut"
    shutil.copy(src, path)
    reader = _core.ModelFileReader(str(path), verify_crc=False)
    offset = next(t["offset"] for t in reader.tensors() if t["name"] == "blk.2.attn_q.weight")
    del reader
    with path.open("r+b") as f:
        f.seek(offset + 7)
        byte = f.read(1)
        f.seek(offset + 7)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=r"is corrupt: tensor blk\.2\.attn_q\.weight has CRC32"):
        _core.Engine.from_file(str(path), n_ctx=64, window=2)
    # Without the check the file opens (the bytes are the caller's business).
    _core.Engine.from_file(str(path), n_ctx=64, window=2, verify_crc=False)


@pytest.mark.slow
def test_smollm2_paged_logits_are_bit_identical(model_dir: Path) -> None:
    m = load_smollm2()
    packed = pack_tensors(m.config, m.tensors, bits=4, group_size=32, clip_search=False)
    path = str(write_model_file(model_dir / "smollm2.elut", m.config, m.tokenizer, packed))
    prompt, decode = [1, 504, 3458, 282, 260, 1345, 30], [314, 2115, 28]
    resident = run(_core.Engine.from_file(path, n_ctx=64), prompt, decode)
    for window in (1, 2, 4, m.config.n_layers):
        engine = _core.Engine.from_file(path, n_ctx=64, window=window, drop_cache=True)
        assert np.array_equal(run(engine, prompt, decode), resident), window


def test_model_stats_report_decode_paging(tiny_file) -> None:
    import edgelut

    path = tiny_file[0]
    total = sum(s for _, s in layer_ranges(path))
    assert edgelut.load(path, n_ctx=64, n_threads=1).generate(PROMPT, max_tokens=4) is not None
    model = edgelut.load(path, n_ctx=64, n_threads=1, window=2, drop_cache=True)
    model.generate(PROMPT, max_tokens=8, temperature=0.0)
    st = model.stats
    p = st.paging
    assert p is not None and p.window == 2
    # The decode phase only: one forward pass per token after the first.
    assert p.tokens == st.completion_tokens - 1 >= 1
    assert p.seconds == st.decode_s
    # Every pass reads every layer once; the loader may run up to W layers ahead
    # of the first and last pass.
    assert (p.tokens - 1) * total <= p.bytes_read <= (p.tokens + 1) * total
    assert 0 <= p.io_wait_s <= p.seconds and p.io_read_s > 0
    assert p.compute_ms > 0 and abs(p.compute_ms + p.io_wait_ms - p.token_ms) < 1e-6
    assert p.overlap > 0
    assert st.peak_rss_mb > 0
    # Not paged: no paging numbers.
    resident = edgelut.load(path, n_ctx=64, n_threads=1)
    resident.generate(PROMPT, max_tokens=4)
    assert resident.stats.paging is None


def test_paging_stats_arithmetic() -> None:
    from edgelut.model import PagingStats

    before = {"wait_ns": 1_000_000, "read_ns": 2_000_000, "bytes_read": 100}
    after = {"wait_ns": 5_000_000, "read_ns": 32_000_000, "bytes_read": 100 + 4 * 1000}
    p = PagingStats.between(3, before, after, tokens=4, seconds=0.04)
    assert (p.token_ms, p.io_wait_ms, p.io_ms, p.compute_ms) == pytest.approx((10.0, 1.0, 7.5, 9.0))
    assert p.bytes_per_token == 1000 and p.overlap == pytest.approx(0.9)
    assert "W=3" in p.summary() and "overlap 0.90" in p.summary()
    assert PagingStats().overlap == 0.0 and PagingStats().bytes_per_token == 0.0


def test_chat_stats_line_shows_paging(tiny_file) -> None:
    import edgelut
    from edgelut.cli.chat import format_stats

    model = edgelut.load(tiny_file[0], n_ctx=64, n_threads=1, window=3)
    model.generate(PROMPT, max_tokens=5, temperature=0.0)
    line = format_stats(model.stats)
    assert "peak RSS" in line and "paging W=3: per token" in line and "MiB read" in line
    assert "\n" not in line
    resident = edgelut.load(tiny_file[0], n_ctx=64, n_threads=1)
    resident.generate(PROMPT, max_tokens=3)
    assert "paging" not in format_stats(resident.stats)


def test_bench_cli_reports_paging(model_dir: Path) -> None:
    import json
    import subprocess
    import sys

    # `edgelut bench` draws prompt ids from 100 up, so the vocabulary must be larger. With 1024
    # rows the lm_head (~80 KiB) outweighs the layer reads that prefetch moves across the ends of
    # the measured decode (up to W layers over the run, ~20 KiB per token), so --page-output's
    # extra bytes show in the per-token figure however the prefetch falls.
    m = tiny_model(layers=N_LAYERS, hidden=128, inter=192, vocab=1024, seed=4)
    packed = pack_tensors(m.config, m.tensors, bits=4, group_size=32, clip_search=False)
    path = str(write_model_file(model_dir / "tiny160.elut", m.config, m.tokenizer, packed))
    total = sum(s for _, s in layer_ranges(path))
    cmd = [
        sys.executable,
        "-m",
        "edgelut.cli",
        "bench",
        path,
        "-t",
        "1",
        "-c",
        "64",
        "-p",
        "4",
        "-n",
        "5",
        "-r",
        "2",
    ]
    r = subprocess.run(
        [*cmd, "--window", "2", "--drop-cache", "--json"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    p = out["paging"]
    assert p["window"] == 2 and p["overlap"] > 0 and p["io_ms"] > 0
    assert 0.5 * total <= p["bytes_read_per_token"] <= 1.5 * total
    assert p["compute_ms"] + p["io_wait_ms"] == pytest.approx(p["token_ms"], abs=2e-3)
    text = subprocess.run([*cmd, "--window", "2"], capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "paging W=2: per token" in text.stdout
    plain = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and "paging" not in json.loads(plain.stdout)
    # --page-output streams the lm_head too: more bytes per token than the layers.
    r = subprocess.run(
        [*cmd, "--window", "2", "--page-output", "--json"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["paging"]["bytes_read_per_token"] > total
    r = subprocess.run([*cmd, "--page-output"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "page_output" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def tied_file(model_dir: Path) -> Path:
    # A vocabulary of several row tiles (and a partial last one), tied like SmolLM2.
    m = tiny_model(layers=N_LAYERS, hidden=128, inter=192, vocab=200, tie=True, seed=6)
    packed = pack_tensors(m.config, m.tensors, bits=4, group_size=32, clip_search=False)
    return write_model_file(model_dir / "tied.elut", m.config, m.tokenizer, packed)


@pytest.mark.parametrize("which", ["untied", "tied"])
@pytest.mark.parametrize("window", [1, 2, 4, N_LAYERS + 1])
def test_paged_output_logits_are_bit_identical(tiny_file, tied_file, which: str, window: int) -> None:
    path = str(tiny_file[0] if which == "untied" else tied_file)
    prompt = [1, 5, 9, 14, 3, 7, 11] if which == "untied" else [1, 150, 9, 199, 64, 7, 128]
    resident = run(_core.Engine.from_file(path, n_ctx=64, n_threads=1), prompt, DECODE)
    engine = _core.Engine.from_file(
        path, n_ctx=64, n_threads=2, window=window, drop_cache=True, page_output=True, prefill_chunk=3
    )
    assert np.array_equal(run(engine, prompt, DECODE), resident)
    # One pass reads the layers and the whole lm_head (the token rows are read apart).
    s0 = engine.pager_stats()
    engine.eval(np.asarray([2], dtype=np.int32), len(prompt) + len(DECODE))
    s1 = engine.pager_stats()
    n_pager_layers = len(s1["layer_wait_ns"])
    assert n_pager_layers > N_LAYERS
    assert s1["acquires"] - s0["acquires"] == n_pager_layers


def test_paged_output_budget_and_errors(tied_file) -> None:
    path = str(tied_file)
    sizes = [s for _, s in layer_ranges(tied_file)]
    # Without the embedding pinned, the minimum budget is smaller.
    mins = []
    for page_output in (False, True):
        with pytest.raises(ValueError) as err:
            _core.Engine.from_file(path, n_ctx=64, budget_bytes=1, page_output=page_output)
        mins.append(int(str(err.value).split("the minimum is ")[1].split()[0]))
    with read_model_file(tied_file, verify_crc=False) as mf:
        embd = mf.entries["token_embd.weight"]
    assert mins[1] <= mins[0] - embd.nbytes + 4096
    engine = _core.Engine.from_file(path, n_ctx=64, budget_bytes=mins[1], page_output=True)
    assert engine.window == 1
    assert (
        _core.Engine.from_file(
            path, n_ctx=64, budget_bytes=mins[1] + max(sizes) + 4096, page_output=True
        ).window
        == 2
    )
    with pytest.raises(ValueError, match="page_output needs paging"):
        _core.Engine.from_file(path, n_ctx=64, page_output=True)


def test_paged_output_truncated_lm_head_raises(model_dir: Path, tied_file) -> None:
    path = model_dir / "tied-truncated.elut"
    shutil.copy(tied_file, path)
    engine = _core.Engine.from_file(
        str(path), n_ctx=64, n_threads=1, window=2, page_output=True, verify_crc=False
    )
    os.truncate(path, 4096)  # the embedding rows and the lm_head are gone
    with pytest.raises(RuntimeError, match="unexpected end of file"):
        engine.eval(np.asarray(PROMPT, dtype=np.int32), 0)


@pytest.mark.slow
def test_smollm2_paged_output_logits_are_bit_identical(model_dir: Path) -> None:
    from edgelut import cache

    path = str(cache.default_model_file())
    prompt, decode = [1, 504, 3458, 282, 260, 1345, 30], [314, 2115, 28]
    resident = run(_core.Engine.from_file(path, n_ctx=64), prompt, decode)
    for window in (1, 2, 4):
        engine = _core.Engine.from_file(path, n_ctx=64, window=window, drop_cache=True, page_output=True)
        assert np.array_equal(run(engine, prompt, decode), resident), window
