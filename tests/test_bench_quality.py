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
