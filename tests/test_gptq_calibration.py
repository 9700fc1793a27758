"""GPTQ calibration set (content, size, sampling), the per-bit-width recipe defaults, and
GPTQ against RTN on a real SmolLM2 layer calibrated with the default set."""

from __future__ import annotations

import numpy as np
import pytest
from mfile_helpers import load_smollm2, tiny_model, word_ids

from edgelut.cli import main
from edgelut.kernels import dequantize_reference
from edgelut.models.modelfile import read_model_file
from edgelut.quantize.calibrate import (
    DEFAULT_CALIBRATION_TEXT,
    calibration_ids,
    default_calibration_text,
    run_calibrated,
)
from edgelut.quantize.gptq import gptq_factor, hessian, quantize_gptq
from edgelut.quantize.recipe import DEFAULT_OVERRIDES, Recipe, parse_overrides
from edgelut.quantize.rtn import quantize_rtn


@pytest.fixture(scope="module")
def smollm2_small():
    return load_smollm2(layers=3)


# -- the calibration set ---------------------------------------------------------------------------


def test_default_calibration_text_is_large_diverse_and_reproducible():
    text = default_calibration_text()
    assert text.startswith(DEFAULT_CALIBRATION_TEXT)
    # pydoc_data.topics ships with CPython: hundreds of thousands of characters of technical prose.
    assert len(text) > 100 * len(DEFAULT_CALIBRATION_TEXT)
    assert "The import system" in text or "import statement" in text
    assert default_calibration_text() == text


def test_calibration_ids_spread_over_the_stream_without_repeats(smollm2_small):
    tj = smollm2_small.tokenizer.tokenizer_json
    ids = calibration_ids(tj, seq_len=128, n_seqs=32)
    assert ids.shape == (32, 128)
    # Distinct windows: a long text is sampled, not one paragraph repeated.
    assert len({row.tobytes() for row in ids}) == 32
    assert len(np.unique(ids)) > 800
    # The old built-in sample alone is short: it is repeated to fill the budget.
    short = calibration_ids(tj, DEFAULT_CALIBRATION_TEXT, seq_len=128, n_seqs=16)
    assert short.shape == (16, 128) and len(np.unique(short)) < 400


def test_calibration_ids_first_window_starts_the_text(smollm2_small):
    tj = smollm2_small.tokenizer.tokenizer_json
    text = "alpha beta gamma delta " * 400
    ids = calibration_ids(tj, text, seq_len=64, n_seqs=4)
    whole = calibration_ids(tj, text, seq_len=64, n_seqs=1)
    assert np.array_equal(ids[0], whole[0])


def test_cli_several_calibration_files(tmp_path, monkeypatch):
    model = tiny_model(layers=2)
    monkeypatch.setattr("edgelut.quantize.convert.load_source", lambda src: model)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("the a of and to in is it that " * 30)
    b.write_text("was for on with as by " * 30)
    out = tmp_path / "m.elut"
    args = ["quantize", "tiny", "-o", str(out), "--method", "gptq", "--bits", "3", "-q"]
    args += ["--calib", str(a), "--calib", str(b), "--calib-tokens", "512"]
    assert main(args) == 0
    assert read_model_file(out).recipe["calibration_tokens"] == 512


def test_cli_rejects_nonpositive_calibration_tokens(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("edgelut.quantize.convert.load_source", lambda src: tiny_model(layers=1))
    args = ["quantize", "tiny", "-o", str(tmp_path / "m.elut"), "--method", "gptq", "--calib-tokens", "0"]
    assert main(args + ["-q"]) != 0
    assert "--calib-tokens" in capsys.readouterr().err


# -- recipe defaults -------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", sorted(DEFAULT_OVERRIDES))
def test_default_overrides_parse(qtype):
    assert parse_overrides(DEFAULT_OVERRIDES[qtype]) == DEFAULT_OVERRIDES[qtype]


def test_default_overrides_apply_and_user_overrides_win():
    names = [
        "token_embd.weight",
        "output.weight",
        "blk.0.attn_q.weight",
        "blk.0.attn_v.weight",
        "blk.5.ffn_down.weight",
        "blk.5.ffn_up.weight",
    ]
    for qtype in ("q2", "q3"):
        r = Recipe(method="gptq", qtype=qtype)
        specs = {n: r.spec_for(n) for n in names}
        # The head is kept at 4 bits below 4 bits (a tied embedding is the head and follows it;
        # q3 leaves an untied embedding at q3), and nothing goes below the base type.
        assert specs["output.weight"].qtype == "q4"
        assert r.spec_for("token_embd.weight", tied_head=True).qtype == "q4"
        assert specs["token_embd.weight"].qtype == ("q4" if qtype == "q2" else "q3")
        assert all(int(s.qtype[1]) >= int(qtype[1]) for s in specs.values())
        assert specs["blk.0.attn_q.weight"].qtype == qtype
        user = Recipe(method="gptq", qtype=qtype, overrides="ffn_down=q2,token_embd=q3")
        assert user.spec_for("blk.5.ffn_down.weight").qtype == "q2"
        assert user.spec_for("token_embd.weight").qtype == "q3"
        plain = Recipe(method="gptq", qtype=qtype, use_defaults=False)
        assert {plain.spec_for(n).qtype for n in names} == {qtype}


# -- GPTQ on a real layer with the default set ---------------------------------------------------


def _output_err(w: np.ndarray, wq: np.ndarray, h: np.ndarray) -> float:
    d = (w - wq).astype(np.float64)
    w = w.astype(np.float64)
    return float(np.sqrt(np.sum((d @ h) * d) / np.sum((w @ h) * w)))


def _hessians(model, ids: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}

    def keep(name: str, w: np.ndarray, h: np.ndarray | None) -> np.ndarray:
        if h is not None:
            out[name] = h
        return w

    for _ in run_calibrated(model, ids, keep):
        pass
    return out


def test_gptq_with_the_default_set_beats_rtn_on_held_out_text(smollm2_small):
    """Layer 1's attention input: calibrate on 512 default-set tokens, test on unrelated prose."""
    model = smollm2_small
    cal = _hessians(model, calibration_ids(model.tokenizer.tokenizer_json, seq_len=64, n_seqs=8))
    test_ids = word_ids(model, repeat=1)
    n = len(test_ids) // 32
    test = _hessians(model, test_ids[: n * 32].reshape(n, 32))
    name = "blk.1.attn_q.weight"
    w = model.tensors[name]
    for qtype in ("q2", "q3"):
        g = dequantize_reference(*quantize_gptq(w, cal[name], qtype, 32, asym=True), qtype, 32)
        r = dequantize_reference(*quantize_rtn(w, qtype, 32, asym=True), qtype, 32)
        eg, er = _output_err(w, g, test[name]), _output_err(w, r, test[name])
        assert eg < 0.9 * er, (qtype, eg, er)


def test_cli_gptq_defaults_to_the_built_in_set_at_4096_tokens(tmp_path, monkeypatch):
    model = tiny_model(layers=1)
    monkeypatch.setattr("edgelut.quantize.convert.load_source", lambda src: model)
    seen: dict[str, object] = {}
    real = calibration_ids

    def spy(tokenizer_json, text=None, **kw):
        seen["text"] = text
        return real(tokenizer_json, text, **kw)

    monkeypatch.setattr("edgelut.quantize.calibrate.calibration_ids", spy)
    out = tmp_path / "m.elut"
    assert main(["quantize", "tiny", "-o", str(out), "--method", "gptq", "--bits", "3", "-q"]) == 0
    assert seen["text"] is None  # None = default_calibration_text()
    assert read_model_file(out).recipe["calibration_tokens"] == 4096


@pytest.mark.parametrize("k", [5, 256, 300, 600])
def test_gptq_factor_is_the_upper_cholesky_of_the_damped_inverse(k):
    """The in-place blocked Cholesky and triangular inverse (block 256: one, whole and partial
    blocks) give U with U^T U = (H + damp)^-1, dead inputs set to 1 first: to float64 rounding
    for a float64 H, to float32's for the float32 H calibration makes."""
    rng = np.random.default_rng(k)
    x = rng.standard_normal((2 * k, k))
    x[:, 1] = 0  # a dead input
    h = hessian(x)
    assert h.dtype == np.float32
    assert np.allclose(h, 2 * x.T @ x / (2 * k), rtol=1e-5, atol=1e-6)
    h64 = h.astype(np.float64)
    want = h64.copy()
    want[1, 1] = 1.0
    diag = np.diag(want).copy()
    want[np.diag_indices(k)] += 0.01 * np.mean(np.diag(want))
    inv = np.linalg.inv(want)
    for hh, rtol, atol in ((h64, 1e-7, 1e-9), (h, 2e-3, 2e-4)):
        f = gptq_factor(hh, damp=0.01)
        assert f.dead[1] and f.dead.sum() == 1 and np.array_equal(f.diag, diag)
        u = f.hinv_upper
        assert u.dtype == hh.dtype and f.damp == 0.01
        assert np.array_equal(np.triu(u), u)
        np.testing.assert_allclose(u.T.astype(np.float64) @ u, inv, rtol=rtol, atol=atol)


def test_gptq_factor_overwrites_in_place_and_raises_the_damping_when_it_must():
    rng = np.random.default_rng(5)
    h = hessian(rng.standard_normal((700, 300)))
    keep = h.copy()
    f = gptq_factor(h, overwrite=True)
    assert f.hinv_upper is h  # the factor lives in the Hessian's buffer
    np.testing.assert_array_equal(gptq_factor(keep).hinv_upper, h)
    # Indefinite even with 1% damping: the strict upper triangle the failed Cholesky left alone
    # restores H, and the next damping (10%) gives the factor of H + 0.1 * mean(diag).
    q, _ = np.linalg.qr(rng.standard_normal((300, 300)))
    ev = np.linspace(1.0, 2.0, 300)
    ev[0] = -0.1  # 1% damping (+0.015) leaves it indefinite, 10% (+0.15) does not
    bad = (q * ev) @ q.T
    bad = (bad + bad.T) / 2
    f = gptq_factor(bad.copy(), overwrite=True)
    assert f.damp == pytest.approx(0.1)
    damped = bad + f.damp * np.mean(np.diag(bad)) * np.eye(300)
    np.testing.assert_allclose(f.hinv_upper.T @ f.hinv_upper, np.linalg.inv(damped), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match=r"Hessian \(300 x 300\) is not positive definite"):
        gptq_factor(-np.eye(300) - 1)
