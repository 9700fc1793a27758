"""The residual-stream rotation leaves the float model's function unchanged (quantize/rotate.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from mfile_helpers import load_smollm2, tiny_model
from model_fixtures import tiny_config, tiny_weights

from edgelut import Model
from edgelut.cli import main
from edgelut.models.config import ImportedModel
from edgelut.models.modelfile import read_model_file
from edgelut.models.reference import block_hadamard, forward
from edgelut.quantize.imatrix import collect_imatrix, save_imatrix
from edgelut.quantize.rotate import hadamard, random_rotation, rotate_model


@pytest.mark.parametrize("d", [64, 96, 576, 896])
def test_rotation_is_orthogonal(d):
    q = random_rotation(d, seed=3)
    np.testing.assert_allclose(q @ q.T, np.eye(d), atol=1e-12)
    assert not np.allclose(q, random_rotation(d, seed=4))
    np.testing.assert_array_equal(q, random_rotation(d, seed=3))  # reproducible
    h = hadamard(16)
    np.testing.assert_allclose(h @ h.T, np.eye(16), atol=1e-12)
    with pytest.raises(ValueError):
        hadamard(12)


def _logits_match(model: ImportedModel, ids: np.ndarray) -> ImportedModel:
    rot = rotate_model(model, seed=1)
    base = forward(model, ids, np.float64)
    got = forward(rot, ids, np.float64)
    # The rotated weights are stored float32: the float64 forward agrees to their rounding...
    np.testing.assert_allclose(got, base, atol=2e-6 * np.abs(base).max())
    # ...and the float32 forward to float32 tolerance.
    np.testing.assert_allclose(forward(rot, ids), base, atol=2e-4 * np.abs(base).max())
    return rot


@pytest.mark.parametrize("arch,tie", [("llama", False), ("llama", True), ("qwen2", True)])
def test_rotation_keeps_tiny_model_logits(arch, tie):
    model = tiny_model(arch=arch, tie=tie, hidden=96, inter=160, layers=2)
    ids = np.array([1, 5, 9, 3, 7, 2, 11, 4])
    rot = _logits_match(model, ids)
    assert not rot.config.tie_embeddings and "output.weight" in rot.tensors
    np.testing.assert_array_equal(rot.tensors["blk.1.ffn_norm.weight"], 1.0)
    assert not np.allclose(rot.tensors["blk.0.attn_q.weight"], model.tensors["blk.0.attn_q.weight"])
    assert model.config.tie_embeddings == tie  # the input model is left alone


def test_rotation_keeps_qwen3_qk_norm_logits():
    cfg = tiny_config("qwen3")
    model = ImportedModel(cfg, tiny_weights(cfg, seed=2), tiny_model().tokenizer)
    _logits_match(model, np.array([3, 17, 40, 2, 99, 5]))


def test_rotation_keeps_real_smollm2_logits():
    model = load_smollm2(layers=4)
    _logits_match(model, np.array([1, 504, 3458, 314, 1771, 28, 253, 4117, 30, 2]))


def test_rotation_refuses_gemma_post_norms():
    cfg = tiny_config("gemma3")
    model = ImportedModel(cfg, tiny_weights(cfg), tiny_model().tokenizer)
    with pytest.raises(ValueError, match="post-attention"):
        rotate_model(model)


def test_cli_quantize_rotate(tmp_path, monkeypatch, capsys):
    model = tiny_model(layers=2, tie=True)
    monkeypatch.setattr("edgelut.quantize.convert.load_source", lambda src: model)
    out = tmp_path / "r.elut"
    assert main(["quantize", "tiny", "-o", str(out), "--bits", "4", "--rotate", "-q"]) == 0
    f = read_model_file(out)
    assert f.recipe["rotation"] == {"kind": "residual-hadamard", "seed": 0}
    assert not f.config.tie_embeddings and "output.weight" in f.entries
    # An imatrix from the unrotated model does not describe the rotated one's inputs.
    im = save_imatrix(tmp_path / "im.gguf", collect_imatrix(model, np.array([[1, 2, 3, 4]])))
    args = ["quantize", "tiny", "-o", str(out), "--bits", "3", "--rotate", "--imatrix", str(im), "-q"]
    capsys.readouterr()
    assert main(args) == 2
    assert "without --rotate" in capsys.readouterr().err
    cfg = tiny_config("gemma3")
    gemma = ImportedModel(cfg, tiny_weights(cfg), model.tokenizer)
    monkeypatch.setattr("edgelut.quantize.convert.load_source", lambda src: gemma)
    assert main(["quantize", "tiny", "-o", str(out), "--rotate", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--rotate" in err and "gemma3" in err


def test_block_hadamard_is_the_block_diagonal_matrix():
    x = np.random.default_rng(0).standard_normal((3, 96))
    want = x @ np.kron(np.eye(3), hadamard(32))
    np.testing.assert_allclose(block_hadamard(x, 32), want, atol=1e-12)


def test_ffn_hadamard_config_is_checked():
    with pytest.raises(ValueError, match="ffn_hadamard"):
        tiny_config(ffn_hadamard=24)  # not a power of two
    with pytest.raises(ValueError, match="ffn_hadamard"):
        tiny_config(ffn_hadamard=64)  # does not divide 96
    with pytest.raises(ValueError, match="rotated already"):
        rotate_model(rotate_model(tiny_model(inter=160)))


def test_engine_runs_the_online_transform_like_the_reference():
    rot = rotate_model(tiny_model(arch="qwen2", tie=True, hidden=128, inter=192, layers=2), seed=2)
    assert rot.config.ffn_hadamard == 64
    ids = [1, 5, 9, 3, 7, 2, 11, 4, 8]

    def engine_logits(cfg) -> np.ndarray:
        m = Model.from_float(cfg, rot.tensors, bits=4, group_size=32, n_ctx=32, n_threads=1, kv_type="f32")
        return m.eval(ids)

    got = engine_logits(rot.config)
    # The reference on the weights the engine holds (dequantised), with the transform: the same
    # logits up to the engine's int8 activations (tests/test_engine.py's tolerance)...
    deq = {k: (v.dequantize() if hasattr(v, "dequantize") else v) for k, v in m_weights(rot).items()}
    ref = forward(ImportedModel(rot.config, deq, rot.tokenizer), np.array(ids))
    assert np.abs(got - ref).max() < 0.035 * np.abs(ref).max()
    # ...which the engine misses by far without the transform.
    off = engine_logits(dataclasses.replace(rot.config, ffn_hadamard=0))
    assert np.abs(off - ref).max() > 3 * np.abs(got - ref).max()


def m_weights(model: ImportedModel) -> dict:
    from edgelut.model import pack_tensors

    return pack_tensors(model.config, model.tensors, bits=4, group_size=32)
