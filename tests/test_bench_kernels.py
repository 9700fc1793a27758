"""tools/bench_kernels.py: argument handling, the C enum parser and the report tables."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from edgelut import kernels

_PATH = Path(__file__).resolve().parents[1] / "tools" / "bench_kernels.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_kernels"] = mod  # dataclasses look the module up by name
    spec.loader.exec_module(mod)
    return mod


def test_quick_selects_two_shapes(bench) -> None:
    args = bench.parse_args(["--quick"])
    assert args.shapes == list(bench.QUICK_SHAPES)
    assert args.threads == [1, 2] and args.m == [1, 128] and args.repeats is None


def test_explicit_shapes_win_over_quick(bench) -> None:
    assert bench.parse_args(["--quick", "--shapes", "896x896"]).shapes == ["896x896"]


def test_missing_llama_build_is_a_usage_error(bench, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--llama-cpp-build", str(tmp_path / "nope")])


def test_parse_enum_explicit_and_sequential(bench) -> None:
    text = "enum ggml_op {\n  GGML_OP_NONE = 0,\n  GGML_OP_DUP, // copy\n  GGML_OP_ADD,\n  GGML_OP_COUNT,\n};"
    assert bench._parse_enum(text, "ggml_op") == {
        "GGML_OP_NONE": 0,
        "GGML_OP_DUP": 1,
        "GGML_OP_ADD": 2,
        "GGML_OP_COUNT": 3,
    }
    text = "enum ggml_type {\n  GGML_TYPE_F32 = 0,\n  // GGML_TYPE_X = 4, gone\n  GGML_TYPE_Q5_0 = 6,\n};"
    assert bench._parse_enum(text, "ggml_type") == {"GGML_TYPE_F32": 0, "GGML_TYPE_Q5_0": 6}


def test_markdown_ratios_and_scaling(bench) -> None:
    R = bench.Result
    results = [
        R("4096x4096", 1, 1, "edgelut q2", 100e-6, 4_000_000, "2.25 bpw"),
        R("4096x4096", 1, 1, "llama q2_K", 300e-6, 5_000_000),
        R("4096x4096", 1, 2, "edgelut q2", 50e-6, 4_000_000, "2.25 bpw"),
        R("4096x4096", 1, 2, "llama q2_K", float("nan"), 0, "skipped"),
    ]
    args = bench.parse_args(["--threads", "1", "2"])
    md = bench.markdown(results, args)
    assert "| 4096x4096 | 1 | 1 | 100 (40) | 300 (17) |" in md
    assert "| 4096x4096 | 1 | 2 | 50.0 (80) | - |" in md
    assert "| q2 vs llama q2_K |" in md and "| 4096x4096 | 1 | 1 | 3.00 |" in md
    assert "| 4096x4096 | 1 | 2.00 | - |" in md  # thread scaling: edgelut 2x, llama missing


def test_markdown_has_the_int8_kernel_columns(bench) -> None:
    R = bench.Result
    results = [
        R("4096x4096", 128, 1, "edgelut q4", 400e-6, 9_000_000, "5.0 bpw"),
        R("4096x4096", 128, 1, "edgelut q4:int8", 200e-6, 9_000_000, "5.0 bpw"),
        R("4096x4096", 128, 1, "llama q4_0", 500e-6, 9_000_000),
    ]
    md = bench.markdown(results, bench.parse_args(["--threads", "1"]))
    assert "| q4 vs llama q4_0 | q4:int8 vs llama q4_0 | q4:int8 vs edgelut q4 |" in md
    assert "| 4096x4096 | 128 | 1 | 1.25 | 2.50 | 2.00 |" in md


@pytest.mark.parametrize("pages", ["huge", "small"])
def test_dram_copies_compute_the_same_product_at_other_addresses(bench, pages: str) -> None:
    """--dram: each copy is the same matrix in its own buffer, and the rotation visits all."""
    rng = np.random.default_rng(3)
    pm = bench.random_packed(96, 256, "q3", 32, rng, "k")
    count = bench.copies_for(pm.nbytes, 3 * pm.nbytes / 1e6)
    assert count == 3
    pms = bench.packed_copies(pm, count, pages)
    addrs = {c.data.ctypes.data for c in pms}
    assert len(addrs) == 3 and all(a % 64 == 0 for a in addrs)
    assert min(addrs) % (2 << 20) == 0  # the arena starts on a huge-page boundary
    x = rng.standard_normal(256).astype(np.float32)
    want = kernels.gemv(pm, x)
    seen: list[int] = []
    run = bench.rotating([lambda c=c: (seen.append(id(c)), kernels.gemv(c, x))[1] for c in pms])
    for _ in range(6):
        np.testing.assert_array_equal(run(), want)
    assert seen == [id(c) for c in pms] * 2
    assert bench.copies_for(pm.nbytes, 0.0) == 1


def test_dram_flag_parses(bench) -> None:
    assert bench.parse_args(["--dram", "256"]).dram == 256.0
    assert bench.parse_args([]).dram == 0.0
    assert bench.parse_args([]).pages == "huge" and bench.parse_args(["--pages", "small"]).pages == "small"
