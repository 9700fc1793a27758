"""The importance matrix: collection, its file (ours and llama.cpp's layouts), weighting the RTN search."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from mfile_helpers import tiny_model

from edgelut.cli import main
from edgelut.models.modelfile import read_model_file
from edgelut.models.reference import rms_norm
from edgelut.quantize.imatrix import ImportanceMatrix, collect_imatrix, load_imatrix, save_imatrix
from edgelut.quantize.rtn import quantize_rtn

TEXT = "the a of and to in is it that was for on with as by " * 12


@pytest.fixture
def tiny_source(monkeypatch):
    model = tiny_model(layers=2, tie=True)
    monkeypatch.setattr("edgelut.quantize.convert.load_source", lambda src: model)
    return model


def _one_error_line(capsys, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_collect_matches_numpy_and_covers_every_linear():
    model = tiny_model(layers=2, tie=True)
    ids = np.arange(1, 13, dtype=np.int64).reshape(2, 6) % model.config.vocab_size
    im = collect_imatrix(model, ids)
    t, cfg = model.tensors, model.config
    linear = {n for n in t if t[n].ndim == 2 and n != "token_embd.weight"}
    assert linear <= set(im.names())
    assert "token_embd.weight" in im.names()  # tied head: its input is recorded under the embedding
    # Layer 0's attention input is the normed embedding: check the sums against numpy.
    x = rms_norm(t["token_embd.weight"][ids].reshape(-1, cfg.hidden_size), t["blk.0.attn_norm.weight"], 1e-5)
    want = (x.astype(np.float64) ** 2).sum(axis=0)
    np.testing.assert_allclose(im.sums["blk.0.attn_q.weight"], want, rtol=1e-4)
    np.testing.assert_array_equal(im.sums["blk.0.attn_q.weight"], im.sums["blk.0.attn_v.weight"])
    assert im.counts["blk.1.ffn_down.weight"] == ids.size
    np.testing.assert_allclose(im.mean("blk.0.attn_q.weight"), want / ids.size, rtol=1e-4)


def test_gguf_round_trip_and_legacy_dat(tmp_path):
    rng = np.random.default_rng(0)
    im = ImportanceMatrix(
        sums={"blk.0.attn_q.weight": rng.random(8, np.float32), "output.weight": rng.random(4, np.float32)},
        counts={"blk.0.attn_q.weight": 100.0, "output.weight": 100.0},
        datasets=["calib.txt"],
        chunks=3,
        chunk_size=512,
    )
    back = load_imatrix(save_imatrix(tmp_path / "im.gguf", im))
    assert back.names() == im.names() and back.datasets == ["calib.txt"] and back.chunks == 3
    for n in im.names():
        np.testing.assert_array_equal(back.sums[n], im.sums[n])
        assert back.counts[n] == 100.0
    # llama.cpp's legacy .dat: count, then per entry name, ncall, nval, values (mean * ncall), then trailer.
    blob = struct.pack("<i", 1)
    name = b"blk.0.ffn_down.weight"
    vals = np.arange(1, 7, dtype=np.float32)
    blob += struct.pack("<i", len(name)) + name + struct.pack("<ii", 4, 6) + vals.tobytes()
    blob += struct.pack("<i", 4) + struct.pack("<i", 5) + b"x.txt"
    (tmp_path / "im.dat").write_bytes(blob)
    dat = load_imatrix(tmp_path / "im.dat")
    np.testing.assert_allclose(dat.mean("blk.0.ffn_down.weight"), vals / 4)


def test_bad_imatrix_files_are_one_line_errors(tmp_path):
    good = ImportanceMatrix(sums={"a.weight": np.ones(4, np.float32)}, counts={"a.weight": 2.0})
    path = save_imatrix(tmp_path / "good.gguf", good)
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    (tmp_path / "cut.dat").write_bytes(struct.pack("<ii", 1, 5) + b"ab")
    (tmp_path / "junk.dat").write_bytes(b"\xff" * 64)
    for name, needle in (("cut.gguf", "cut.gguf"), ("cut.dat", "truncated"), ("junk.dat", "not an imatrix")):
        with pytest.raises(ValueError, match=needle):
            load_imatrix(tmp_path / name)
    with pytest.raises(ValueError, match="no such imatrix"):
        load_imatrix(tmp_path / "missing.gguf")


def test_bad_imatrix_against_model(tmp_path, tiny_source, capsys):
    out = tmp_path / "o.elut"
    q9, q0 = "blk.9.attn_q.weight", "blk.0.attn_q.weight"
    wrong = ImportanceMatrix(sums={q9: np.ones(128, np.float32)}, counts={q9: 1})
    bad_names = save_imatrix(tmp_path / "names.gguf", wrong)
    assert main(["quantize", "tiny", "-o", str(out), "--bits", "3", "--imatrix", str(bad_names), "-q"]) == 2
    _one_error_line(capsys, "--imatrix", "blk.9.attn_q.weight", "does not have")
    short = ImportanceMatrix(sums={q0: np.ones(7, np.float32)}, counts={q0: 1})
    bad_shape = save_imatrix(tmp_path / "shape.gguf", short)
    assert main(["quantize", "tiny", "-o", str(out), "--bits", "3", "--imatrix", str(bad_shape), "-q"]) == 2
    _one_error_line(capsys, "--imatrix", "7 values")
    im = save_imatrix(tmp_path / "ok.gguf", short)
    assert main(["quantize", "tiny", "-o", str(out), "--method", "gptq", "--imatrix", str(im), "-q"]) == 2
    _one_error_line(capsys, "--imatrix")


def test_weighted_search_reduces_weighted_error():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    imp = np.exp(2.0 * rng.standard_normal(256)).astype(np.float32)  # a few channels dominate

    def weighted_err(refine: int, importance: np.ndarray | None) -> float:
        codes, scales, mins = quantize_rtn(w, "q2", 32, asym=True, importance=importance, refine=refine)
        deq = (codes.reshape(64, 8, 32) * scales[..., None] + mins[..., None]).reshape(64, 256)
        return float(((deq - w) ** 2 * imp).sum())

    # Without the refit the weighted search picks, per group, the best of the same clip candidates.
    assert weighted_err(0, imp) <= weighted_err(0, None)
    assert weighted_err(3, imp) < 0.9 * weighted_err(3, None)


def test_cli_imatrix_then_quantize(tmp_path, tiny_source, capsys):
    text = tmp_path / "calib.txt"
    text.write_text(TEXT)
    im_path = tmp_path / "tiny.imatrix.gguf"
    args = ["imatrix", "tiny", "--text", str(text), "-o", str(im_path), "--ctx", "16", "--chunks", "3", "-q"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(im_path)
    im = load_imatrix(im_path)
    assert im.chunks == 3 and im.chunk_size == 16 and "blk.1.ffn_down.weight" in im.names()
    out = tmp_path / "w.elut"
    assert main(["quantize", "tiny", "-o", str(out), "--bits", "2", "--imatrix", str(im_path), "-q"]) == 0
    f = read_model_file(out)
    assert f.recipe["imatrix"]["entries"] == len(im.names())
    plain = tmp_path / "p.elut"
    assert main(["quantize", "tiny", "-o", str(plain), "--bits", "2", "-q"]) == 0
    # Same widths, different codes: the weighting changed what the search picked.
    g = read_model_file(plain)
    assert f.entries["blk.0.attn_q.weight"].nbytes == g.entries["blk.0.attn_q.weight"].nbytes
    assert not np.array_equal(f.raw("blk.0.attn_q.weight"), g.raw("blk.0.attn_q.weight"))
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "imatrix:" in capsys.readouterr().out


def test_cli_imatrix_bad_flags(tmp_path, tiny_source, capsys):
    out = str(tmp_path / "x.gguf")
    assert main(["imatrix", "tiny", "-o", out, "--text", str(tmp_path / "none.txt")]) == 2
    _one_error_line(capsys, "--text", "not a file")
    assert main(["imatrix", "tiny", "-o", str(tmp_path / "x.gguf"), "--chunks", "0"]) == 2
    _one_error_line(capsys, "--chunks")


def test_tied_head_entry_named_output_moves_to_the_embedding():
    model = tiny_model(layers=1, tie=True)
    im = ImportanceMatrix(sums={"output.weight": np.ones(128, np.float32)}, counts={"output.weight": 4.0})
    im.check_against(model)
    assert im.names() == ["token_embd.weight"]
