"""Where a model file's weights live (csrc/io/huge_memory.h, from_file.h).

A resident model is read into anonymous memory advised for transparent huge
pages where the kernel offers them (decode streams it faster); `mmap` maps the
file instead; a paged model keeps its slots in huge-page memory. Where the
bytes live never changes what is computed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgelut import _core, cache

PROMPT = np.asarray([1, 42, 7, 300, 5, 91, 12, 8], dtype=np.int32)


def huge_pages_offered() -> bool:
    """What the engine decides from (huge_pages_available in huge_memory.cc)."""
    try:
        line = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False
    return "[always]" in line or "[madvise]" in line


@pytest.fixture(scope="module")
def model_path() -> Path:
    return cache.default_model_file()


def logits(engine: _core.Engine) -> np.ndarray:
    rows = [engine.eval(PROMPT, 0, all_logits=True)]
    tok = int(np.argmax(rows[0][-1]))
    for i in range(4):
        row = engine.eval(np.asarray([tok], dtype=np.int32), len(PROMPT) + i)
        rows.append(row[None, :])
        tok = int(np.argmax(row))
    return np.concatenate(rows)


def test_read_mapped_and_paged_weights_give_identical_logits(model_path: Path) -> None:
    read = _core.Engine.from_file(str(model_path), n_ctx=64, n_threads=1)
    mapped = _core.Engine.from_file(str(model_path), n_ctx=64, n_threads=1, mmap=True)
    paged = _core.Engine.from_file(str(model_path), n_ctx=64, n_threads=1, window=3)
    assert read.weight_memory == ("read" if huge_pages_offered() else "mmap")
    assert mapped.weight_memory == "mmap" and paged.weight_memory == "paged"
    expected = logits(mapped)
    assert np.array_equal(logits(read), expected)
    assert np.array_equal(logits(paged), expected)


def test_read_weights_sit_in_huge_pages(model_path: Path) -> None:
    """The SmolLM2 file (~100 MB) read at load: most of it in 2 MiB pages when the
    kernel offers them, none when mapped (a file mapping gets none on ext4)."""
    size = model_path.stat().st_size
    read = _core.Engine.from_file(str(model_path), n_ctx=64, n_threads=1)
    mapped = _core.Engine.from_file(str(model_path), n_ctx=64, n_threads=1, mmap=True)
    assert mapped.huge_page_bytes == 0
    if huge_pages_offered():
        # Whole 2 MiB pages of the copy; the kernel may leave a few as small pages.
        assert size // 2 <= read.huge_page_bytes <= size + (2 << 20)
    else:
        assert read.weight_memory == "mmap" and read.huge_page_bytes == 0


def test_paged_slots_sit_in_huge_pages(model_path: Path) -> None:
    paged = _core.Engine.from_file(str(model_path), n_ctx=64, n_threads=1, window=2)
    paged.eval(PROMPT, 0)  # fills the slots
    if huge_pages_offered():
        assert paged.huge_page_bytes >= 2 << 20
    else:
        assert paged.huge_page_bytes == 0


def test_a_tensor_engine_reports_no_file_memory() -> None:
    from mfile_helpers import tiny_model

    from edgelut.model import engine_config, pack_tensors

    m = tiny_model(layers=2, hidden=64, inter=128, seed=1)
    packed = pack_tensors(m.config, m.tensors, bits=4, group_size=32, clip_search=False)
    engine = _core.Engine(engine_config(m.config), packed, n_ctx=32, n_threads=1)
    assert engine.weight_memory == "" and engine.huge_page_bytes == 0


@pytest.mark.parametrize("flag", [[], ["--mmap"]])
def test_bench_reports_the_weight_memory(model_path: Path, flag: list[str]) -> None:
    cmd = [sys.executable, "-m", "edgelut.cli", "bench", str(model_path)]
    cmd += ["-t", "1", "-p", "4", "-n", "2", "-r", "1"]
    out = subprocess.run(cmd + ["--json", *flag], check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    expected = "read" if huge_pages_offered() and not flag else "mmap"
    assert result["weight_memory"] == expected
    assert (result["huge_page_mb"] > 0) == (expected == "read")
    text = subprocess.run(cmd + flag, check=True, capture_output=True, text=True).stdout
    assert ("read into huge-page memory" in text) == (expected == "read")
