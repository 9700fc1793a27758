"""BitNet b1.58: its architecture (ReLU^2 or SiLU gate, sub-norms, int8 activations) and its ternary files.

Tiny BitNet models with ternary weights ``a * t`` are written by the tests as
GGUF (TQ1_0 and TQ2_0, under llama.cpp's ``bitnet`` and bitnet.cpp's
``bitnet-b1.58`` architecture names) and as transformers' packed BitNet
safetensors. The imported ternary codes must equal the written ones, both
importers must agree, and the engine on the converted file must follow the
numpy reference (which runs the same switches on the dequantised weights).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lowbit_writers import pack_bitnet, write_bitnet_hf_dir
from model_fixtures import tiny_config, write_gguf

from edgelut import _core
from edgelut.models.config import LINEAR_TENSORS, ModelConfig
from edgelut.models.importers import load_model
from edgelut.models.reference import act_int8, forward
from edgelut.quantize.convert import convert
from edgelut.quantize.recipe import Recipe

IDS = [5, 70, 123, 9, 200, 31, 31, 88, 250, 17, 4, 140]
SCALE = 0.0625  # an fp16 number, and 1 / 16 for transformers' BitLinear weight_scale
ENGINE_RTOL = 0.05  # as in test_arch_families: the engine's int8 activation tables


class Weights:
    def __init__(self, config: ModelConfig, tensors: dict[str, np.ndarray]) -> None:
        self.config, self.tensors = config, tensors


def bitnet_config(ffn_act: str = "relu2") -> ModelConfig:
    # Every linear layer's input width is 256: one TQ block per row.
    return tiny_config(
        "bitnet",
        hidden_size=256,
        intermediate_size=256,
        n_heads=4,
        n_kv_heads=2,
        head_dim=64,
        ffn_act=ffn_act,
    )


def bitnet_weights(cfg: ModelConfig, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Float weights (linear layers exactly SCALE * t) and the ternary codes t of each linear layer."""
    from edgelut.models.importers.huggingface import expected_shapes

    rng = np.random.default_rng(seed)
    w, codes = {}, {}
    for name, shape in expected_shapes(cfg).items():
        if name.endswith("norm.weight"):
            w[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif name.split(".", 2)[-1] in LINEAR_TENSORS:
            t = rng.integers(-1, 2, size=shape).astype(np.int8)
            t[:, 0] = 1  # every block holds a non-zero code, so its absmax scale is SCALE
            codes[name] = t
            w[name] = SCALE * t.astype(np.float32)
        else:
            w[name] = (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
    return w, codes


def test_act_int8_rounds_each_row_to_127_levels() -> None:
    x = np.array([[0.5, -1.0, 0.25, 0.0], [3.0, 1.0, -2.0, 0.001]])
    y = act_int8(x)
    np.testing.assert_allclose(y[0] * 127, np.rint(x[0] * 127), atol=1e-12)
    assert y[1, 0] == 3.0 and y[1, 3] == 0.0


def test_pack_bitnet_layout() -> None:
    t = np.array([[-1], [0], [1], [1], [0], [0], [-1], [1]], dtype=np.int8)  # 8 rows -> 2 bytes
    packed = pack_bitnet(t)
    # Byte i holds rows i, 2 + i, 4 + i, 6 + i in bits 0-1, 2-3, 4-5, 6-7 (as t + 1).
    assert packed[0, 0] == (0 | 2 << 2 | 1 << 4 | 0 << 6) and packed[1, 0] == (1 | 2 << 2 | 1 << 4 | 2 << 6)


@pytest.mark.parametrize(
    ("quant", "gguf_arch", "act"), [("TQ2_0", "bitnet-b1.58", "relu2"), ("TQ1_0", "bitnet", "silu")]
)
def test_ternary_gguf_codes_are_the_files(tmp_path: Path, quant: str, gguf_arch: str, act: str) -> None:
    cfg = bitnet_config(act)
    w, codes = bitnet_weights(cfg)
    m = load_model(write_gguf(tmp_path / "b.gguf", cfg, w, quant=quant, arch=gguf_arch))
    assert (m.config.architecture, m.config.ffn_act, m.config.sub_norms, m.config.act_int8) == (
        "bitnet",
        act,
        True,
        True,
    )
    for name, t in codes.items():
        c, s, mins = m.source_codes[name]
        np.testing.assert_array_equal(c, t, err_msg=name)
        assert mins is None and np.all(s == SCALE) and m.source_specs[name] == ("tq", 128, False)
        np.testing.assert_array_equal(m.tensors[name], w[name], err_msg=name)
    info = m.import_info
    assert info["format"] == "gguf-ternary" and info["types"] == {quant: len(codes) + 1}  # + output.weight


def _engine(path: Path) -> np.ndarray:
    e = _core.Engine.from_file(str(path), n_ctx=64, n_threads=1, kv_type="f32")
    return e.eval(np.array(IDS, np.int32), 0, all_logits=True)


def test_bitnet_engine_follows_reference_and_importers_agree(tmp_path: Path) -> None:
    from edgelut.models.modelfile import read_model_file

    cfg = bitnet_config("relu2")
    w, codes = bitnet_weights(cfg, seed=1)
    gg = load_model(write_gguf(tmp_path / "b.gguf", cfg, w, quant="TQ2_0", arch="bitnet-b1.58"))
    hf = load_model(write_bitnet_hf_dir(tmp_path / "hf", cfg, w, codes, 1.0 / SCALE))
    assert hf.config.ffn_act == "relu2" and hf.import_info["format"] == "bitnet"
    assert hf.import_info["exact_layers"] == len(codes) and hf.import_info["rounded_scales"] == 0
    for name, t in codes.items():
        np.testing.assert_array_equal(hf.source_codes[name][0], t, err_msg=name)
        np.testing.assert_array_equal(hf.tensors[name], gg.tensors[name], err_msg=name)
    path = convert(gg, tmp_path / "b.elut", Recipe(qtype="q4", group_size=32), progress=False)
    mf = read_model_file(path)
    assert mf.config.sub_norms and mf.config.act_int8 and mf.config.ffn_act == "relu2"
    assert all(mf.entries[name].qtype == "tq" for name in codes)
    stored = {k: v if isinstance(v, np.ndarray) else v.dequantize() for k, v in mf.tensors().items()}
    for name in codes:  # the ternary layers are the file's, bit for bit
        np.testing.assert_array_equal(stored[name], w[name], err_msg=name)
    ref = forward(Weights(mf.config, stored), IDS, dtype=np.float64)
    got = _engine(path)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < ENGINE_RTOL, err
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.8
    # The switches matter: without sub-norms and int8 activations the reference moves far away.
    plain = ModelConfig(**{**mf.config.__dict__, "sub_norms": False, "act_int8": False, "ffn_act": "silu"})
    other = forward(
        Weights(plain, {k: v for k, v in stored.items() if "sub_norm" not in k}), IDS, dtype=np.float64
    )
    assert np.abs(other - ref).max() / np.abs(ref).max() > 10 * err


def test_bitnet_hf_autobitlinear_multiplies_and_bad_codes_fail(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    cfg = bitnet_config()
    w, codes = bitnet_weights(cfg, seed=2)
    hf = load_model(write_bitnet_hf_dir(tmp_path / "a", cfg, w, codes, SCALE, linear_class="autobitlinear"))
    for name in codes:
        np.testing.assert_array_equal(hf.tensors[name], w[name], err_msg=name)
    d = write_bitnet_hf_dir(tmp_path / "b", cfg, w, codes, 1.0 / SCALE)
    t = load_file(str(d / "model.safetensors"))
    t["model.layers.1.mlp.up_proj.weight"][0, 0] = 0xFF  # the 2-bit value 3 is no ternary code
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj.weight holds the 2-bit value 3"):
        load_model(d)


def test_bitnet_cannot_be_sharded() -> None:
    from edgelut import Model

    cfg = bitnet_config()
    w, _ = bitnet_weights(cfg, seed=3)
    comm = _core.make_local_group(2)[0]
    with pytest.raises(ValueError, match=r"sub-norms \(BitNet\) cannot be split across shards"):
        Model.from_float(
            cfg,
            w,
            bits=4,
            group_size=32,
            n_ctx=32,
            n_threads=1,
            shard=_core.ShardSpec(0, 1, 0, 128),
            communicator=comm,
        )


def test_ternary_gguf_of_a_llama_unpermutes_codes_and_info_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TQ2_0 on a llama (q/k rows permuted in the file): the codes come back in HF row order."""
    from edgelut.cli import main

    cfg = tiny_config("llama", hidden_size=256, intermediate_size=256, n_heads=4, n_kv_heads=2, head_dim=64)
    w, codes = bitnet_weights(cfg, seed=4)
    src = write_gguf(tmp_path / "l.gguf", cfg, w, quant="TQ2_0")
    m = load_model(src)
    for name in ("blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.1.ffn_down.weight"):
        np.testing.assert_array_equal(m.source_codes[name][0], codes[name], err_msg=name)
    out = tmp_path / "l.elut"
    assert main(["quantize", str(src), "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    line = "import:        ternary GGUF (15 TQ2_0), groups of 256, 15/16 matrices ternary, imported exactly"
    assert line in text
    assert "tq g128" in text
