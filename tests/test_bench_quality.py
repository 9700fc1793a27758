"""tools/bench_quality.py: the F32 GGUF of a source, bits per weight of files, row names."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import tiny_config, tiny_weights, write_gguf

_PATH = Path(__file__).resolve().parents[1] / "tools" / "bench_quality.py"


@pytest.fixture(scope="module")
def bq():
    spec = importlib.util.spec_from_file_location("bench_quality", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_float_gguf_has_the_sources_values_layout_and_metadata(bq, tmp_path: Path, arch: str) -> None:
    import gguf

    cfg = tiny_config(arch)
    src = write_gguf(tmp_path / "src.gguf", cfg, tiny_weights(cfg), quant="Q4_1")
    dst = bq.write_float_gguf(src, tmp_path / "f32.gguf")
    a, b = gguf.GGUFReader(str(src)), gguf.GGUFReader(str(dst))
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors, strict=True):
        assert tb.tensor_type == gguf.GGMLQuantizationType.F32
        assert ta.shape.tolist() == tb.shape.tolist()
        want = gguf.quants.dequantize(ta.data, ta.tensor_type).reshape(-1)
        np.testing.assert_array_equal(np.asarray(tb.data).reshape(-1), want, err_msg=ta.name)
    for key, field in a.fields.items():
        if not key.startswith("GGUF.") and key != "general.file_type":
            assert b.fields[key].contents() == field.contents(), key
    assert b.fields["general.file_type"].contents() == int(gguf.LlamaFileType.ALL_F32)
    # Both import to the same model (the importer un-permutes q/k of both the same way).
    from edgelut.models.importers import load_model

    ma, mb = load_model(src), load_model(dst)
    for name, w in ma.tensors.items():
        np.testing.assert_array_equal(mb.tensors[name], w, err_msg=name)


def test_bits_per_weight_counts_every_tensor(bq, tmp_path: Path) -> None:
    cfg = tiny_config("llama")
    w = tiny_weights(cfg)
    bpw, types = bq.gguf_bpw(write_gguf(tmp_path / "q.gguf", cfg, w, quant="Q4_0"))
    n2d = sum(a.size for n, a in w.items() if a.ndim == 2 and n != "token_embd.weight")
    rest = sum(a.size for n, a in w.items() if a.ndim != 2 or n == "token_embd.weight")
    assert bpw == pytest.approx((n2d * 4.5 + rest * 32) / (n2d + rest))  # Q4_0: 18 bytes per 32
    assert set(types) == {"Q4_0", "F32"}


def test_row_names(bq) -> None:
    assert bq.edgelut_args("q3-gptq-g32") == ["--bits", "3", "--method", "gptq", "--group-size", "32"]
    assert bq.edgelut_args("tq-ternary") == ["--bits", "ternary", "--method", "ternary"]
    assert bq.edgelut_args("q2-rtn-sym-nodef")[-2:] == ["--sym", "--no-default-recipe"]
    assert bq.is_edgelut_row("q4-rtn") and not bq.is_edgelut_row("llama-Q4_0")
    with pytest.raises(ValueError, match="unknown part 'x'"):
        bq.edgelut_args("q2-rtn-x")


def test_final_estimate_parser(bq) -> None:
    m = bq._FINAL.search("... Final estimate: PPL = 38.8134 +/- 3.67398\n")
    assert m and float(m.group(1)) == 38.8134


def _row(name: str, ppl: float, size: int, **kw: float) -> dict:
    return {"name": name, "ppl": ppl, "se": 0.1, "bpw": 8 * size / 1e6, "size": size, **kw}


def test_table_shows_speed_columns_only_when_measured(bq) -> None:
    plain = bq.table([_row("q2-rtn", 30.0, 1 << 20)])
    assert "decode" not in plain and plain.splitlines()[1] == "|" + " --- |" * 5
    rows = [
        _row("q2-rtn", 30.0, 1 << 20, decode_tps=12.5, prefill_tps=80.0),
        _row("llama-Q2_K", 31.0, 2 << 20),
    ]
    text = bq.table(rows).splitlines()
    assert text[0].endswith("decode tok/s | prefill tok/s |") and text[1] == "|" + " --- |" * 7
    assert text[2].endswith("| 12.5 | 80.0 |") and text[3].endswith("| nan | nan |")


def test_variants_and_flags(bq, tmp_path: Path, capsys) -> None:
    assert bq.edgelut_args("q3-gptq-ao-flat") == [
        "--bits",
        "3",
        "--method",
        "gptq",
        "--act-order",
        "--super-block",
        "0",
    ]
    with pytest.raises(SystemExit):
        bq.main(["x.gguf", "--llama-cpp-build", str(tmp_path), "--variant", "Bad Name=--x"])
    assert "--variant: 'Bad Name=--x' is not NAME=ARGS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bq.main(["x.gguf", "--llama-cpp-build", str(tmp_path), "--calib", str(tmp_path / "none.txt")])
    assert "--calib:" in capsys.readouterr().err


def test_plot_front_writes_a_png(bq, tmp_path: Path) -> None:
    results = {
        r["name"]: r
        for r in (
            _row("llama-Q2_K", 40.0, 300 << 20),
            _row("llama-Q3_K_S", 25.0, 350 << 20),
            _row("q2-rtn-nodef", 45.0, 250 << 20),
            _row("q3-gptq-ao", 22.0, 330 << 20),
        )
    }
    png = tmp_path / "front.png"
    bq.plot_front(results, png, "tiny")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_rtn_imatrix_gives_rtn_rows_llama_imatrix_file(bq, tmp_path: Path, capsys) -> None:
    import argparse

    (tmp_path / "f32.gguf").write_bytes(b"made")  # both exist: nothing is run
    (tmp_path / "imatrix.dat").write_bytes(b"made")
    calib = tmp_path / "calib.txt"
    args = argparse.Namespace(calib=calib, rtn_imatrix=True, source=tmp_path / "src.gguf")
    log = tmp_path / "log.txt"
    assert bq.edgelut_calibration("q3-rtn-e2", args, tmp_path, log) == [
        "--imatrix",
        str(tmp_path / "imatrix.dat"),
    ]
    # GPTQ needs its Hessians: edgelut's own calibration pass on the same text.
    assert bq.edgelut_calibration("q3-gptq-ao", args, tmp_path, log) == ["--calib", str(calib)]
    args.rtn_imatrix = False
    assert bq.edgelut_calibration("q3-rtn", args, tmp_path, log) == ["--calib", str(calib)]
    args.calib = None
    assert bq.edgelut_calibration("q3-rtn", args, tmp_path, log) == []
    with pytest.raises(SystemExit):
        bq.main(["x.gguf", "--llama-cpp-build", str(tmp_path), "--rtn-imatrix"])
    assert "--rtn-imatrix: needs --calib" in capsys.readouterr().err
