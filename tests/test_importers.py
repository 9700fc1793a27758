"""Importers: GGUF (real SmolLM2 + tiny written files), Hugging Face safetensors, ONNX, dispatch."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import real_model
from model_fixtures import (
    smollm2_gguf,
    smollm2_model,
    tiny_config,
    tiny_weights,
    write_gguf,
    write_hf_dir,
    write_onnx,
    write_tokenizer_files,
)

from edgelut.models.gguf_file import ModelFileError
from edgelut.models.importers import IMPORTERS, Importer, find_importer, load_model
from edgelut.models.importers.gguf import permute_rows, unpermute_rows
from edgelut.models.importers.huggingface import gguf_to_hf_name, hf_to_gguf_name

# --- the real model -----------------------------------------------------------------------------


def test_real_smollm2_config_and_tensors() -> None:
    m = smollm2_model()
    c = m.config
    assert (c.architecture, c.n_layers, c.hidden_size, c.n_heads, c.n_kv_heads) == ("llama", 30, 576, 9, 3)
    assert (c.vocab_size, c.head_dim, c.intermediate_size) == (49152, 64, 1536)
    assert c.tie_embeddings and "output.weight" not in m.tensors
    assert c.rope_style == "neox" and c.rope_theta == 100000.0 and not c.attn_bias
    assert c.bos_token_id == 1 and c.eos_token_ids == (2,)
    assert m.tensors["token_embd.weight"].shape == (49152, 576)
    assert m.tensors["blk.0.attn_k.weight"].shape == (192, 576)
    assert m.tensors["blk.29.ffn_down.weight"].shape == (576, 1536)
    assert all(t.dtype == np.float32 for t in m.tensors.values())
    assert m.tokenizer.chat_template and "<|im_start|>" in m.tokenizer.chat_template
    assert (m.tokenizer.bos_token, m.tokenizer.eos_token, m.tokenizer.add_bos) == (
        "<|im_start|>",
        "<|im_end|>",
        False,
    )


def test_real_q4_1_codes_dequantise_exactly() -> None:

    m = smollm2_model()
    assert len(m.source_codes) == 210  # every linear weight of the 30 layers is Q4_1
    for name, (codes, scales, mins) in m.source_codes.items():
        assert codes.dtype == np.int8 and codes.min() >= 0 and codes.max() <= 15
        n, k = codes.shape
        assert scales.shape == mins.shape == (n, k // 32)
        w = np.repeat(scales, 32, axis=1) * codes.astype(np.float32) + np.repeat(mins, 32, axis=1)
        np.testing.assert_array_equal(w, m.tensors[name], err_msg=name)


@pytest.mark.slow
def test_real_q_is_unpermuted_gguf_tensor() -> None:
    """The importer's q/k is gguf's own dequantisation of the file's tensor, rows un-permuted."""
    import gguf

    m = smollm2_model()
    reader = gguf.GGUFReader(str(smollm2_gguf()))
    t = next(t for t in reader.tensors if t.name == "blk.3.attn_q.weight")
    raw = gguf.quants.dequantize(t.data, t.tensor_type).reshape(576, 576)
    np.testing.assert_array_equal(unpermute_rows(raw, 9), m.tensors["blk.3.attn_q.weight"])
    np.testing.assert_array_equal(permute_rows(m.tensors["blk.3.attn_q.weight"], 9), raw)


# --- GGUF on tiny written files -----------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_f32_round_trip_undoes_permutation(tmp_path: Path, arch: str) -> None:
    cfg = tiny_config(arch)
    w = tiny_weights(cfg)
    m = load_model(write_gguf(tmp_path / "tiny.gguf", cfg, w))
    assert m.config.architecture == arch and m.config.attn_bias == (arch == "qwen2")
    assert not m.config.tie_embeddings and m.source_codes == {}
    assert set(m.tensors) == set(w)
    for name, arr in w.items():
        np.testing.assert_array_equal(m.tensors[name], arr, err_msg=name)
    assert m.tokenizer.chat_template is not None


@pytest.mark.parametrize("quant", ["Q4_0", "Q4_1"])
def test_gguf_q4_source_codes(tmp_path: Path, quant: str) -> None:
    import gguf

    cfg = tiny_config("llama")
    w = tiny_weights(cfg, seed=1)
    m = load_model(write_gguf(tmp_path / "q.gguf", cfg, w, quant=quant))
    qtype = gguf.GGMLQuantizationType[quant]
    for name in ("blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.1.ffn_down.weight", "output.weight"):
        codes, scales, mins = m.source_codes[name]
        deq = np.repeat(scales, 32, axis=1) * codes.astype(np.float32) + np.repeat(mins, 32, axis=1)
        np.testing.assert_array_equal(deq, m.tensors[name], err_msg=name)
        # Same numbers as gguf's own quantise->dequantise of the HF-orientation weight.
        ref = gguf.quants.dequantize(gguf.quants.quantize(w[name], qtype), qtype)
        np.testing.assert_array_equal(m.tensors[name], ref, err_msg=name)
    if quant == "Q4_0":
        codes, scales, mins = m.source_codes["blk.0.ffn_up.weight"]
        np.testing.assert_array_equal(mins, -8 * scales)


def test_gguf_tied_embeddings(tmp_path: Path) -> None:
    cfg = tiny_config("llama", tie_embeddings=True)
    w = tiny_weights(cfg)
    m = load_model(write_gguf(tmp_path / "tied.gguf", cfg, w))
    assert m.config.tie_embeddings and "output.weight" not in m.tensors


def test_gguf_errors(tmp_path: Path) -> None:
    cfg = tiny_config("llama")
    good = write_gguf(tmp_path / "good.gguf", cfg, tiny_weights(cfg))

    with pytest.raises(RuntimeError, match="missing.gguf: no such file"):
        load_model(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.gguf")

    foreign = tmp_path / "foreign.gguf"
    foreign.write_bytes(b"PK\x03\x04" + bytes(200))
    with pytest.raises(ValueError, match=r"foreign\.gguf: not a GGUF file"):
        load_model(foreign)

    data = good.read_bytes()
    for cut in (len(data) // 2, 40, len(data) - 16):
        truncated = tmp_path / f"cut{cut}.gguf"
        truncated.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match=rf"cut{cut}\.gguf: truncated"):
            load_model(truncated)

    other = write_gguf(tmp_path / "mamba.gguf", cfg, tiny_weights(cfg), arch="mamba")
    with pytest.raises(ValueError, match=r"mamba\.gguf: architecture 'mamba' is not supported"):
        load_model(other)


def test_real_truncated_gguf_error(tmp_path: Path) -> None:
    src = smollm2_gguf()
    cut = tmp_path / "smol-cut.gguf"
    with open(src, "rb") as fh:
        cut.write_bytes(fh.read(1_000_000))  # inside the vocabulary
    with pytest.raises(ModelFileError, match="smol-cut.gguf: truncated"):
        load_model(cut)


# --- Hugging Face -------------------------------------------------------------------------------


def test_hf_name_map_round_trips() -> None:
    cfg = tiny_config("qwen2")
    for name in tiny_weights(cfg):
        assert hf_to_gguf_name(gguf_to_hf_name(name)) == name
    assert hf_to_gguf_name("model.layers.3.self_attn.rotary_emb.inv_freq") is None


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_hf_directory_round_trip_and_matches_gguf(tmp_path: Path, arch: str) -> None:
    cfg = tiny_config(arch)
    w = tiny_weights(cfg, seed=2)
    hf = load_model(write_hf_dir(tmp_path / "hf", cfg, w))
    gg = load_model(write_gguf(tmp_path / "m.gguf", cfg, w))
    assert hf.config == gg.config.__class__(**{**gg.config.__dict__, "name": hf.config.name})
    for name, arr in w.items():
        np.testing.assert_array_equal(hf.tensors[name], arr, err_msg=name)
        np.testing.assert_array_equal(hf.tensors[name], gg.tensors[name], err_msg=name)
    tok = hf.tokenizer
    assert (tok.bos_token, tok.eos_token, tok.chat_template is not None) == (
        "<|im_start|>",
        "<|im_end|>",
        True,
    )


def test_llama3_rope_scaling_from_hf_and_gguf(tmp_path: Path) -> None:
    """HF's rope_scaling {rope_type: llama3} and llama.cpp's rope_freqs.weight give one config."""
    import json

    from edgelut.models.importers.huggingface import llama3_freq_factors

    cfg = tiny_config("llama", rope_theta=500000.0)
    w = tiny_weights(cfg)
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    d = write_hf_dir(tmp_path / "hf", cfg, w)
    doc = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**doc, "rope_scaling": scaling}))
    hf = load_model(d)
    factors = hf.config.rope_scaling["factors"]
    assert hf.config.rope_scaling["type"] == "freq_factors" and len(factors) == cfg.head_dim // 2
    assert factors[0] == 1.0 and factors[-1] == 8.0 and any(1.0 < f < 8.0 for f in factors)
    assert factors == llama3_freq_factors(scaling, 500000.0, cfg.head_dim)

    gw = dict(w, **{"rope_freqs.weight": np.asarray(factors, dtype=np.float32)})
    gg = load_model(write_gguf(tmp_path / "l3.gguf", cfg, gw))
    assert "rope_freqs.weight" not in gg.tensors
    assert gg.config.rope_scaling["type"] == "freq_factors"
    np.testing.assert_allclose(gg.config.rope_scaling["factors"], factors, rtol=1e-7)


def test_hf_bf16_and_tied(tmp_path: Path) -> None:
    cfg = tiny_config("llama", tie_embeddings=True)
    w = tiny_weights(cfg, seed=3)
    m = load_model(write_hf_dir(tmp_path / "bf16", cfg, w, bf16=True))
    assert m.config.tie_embeddings and "output.weight" not in m.tensors
    for name, arr in w.items():
        rounded = ((arr.view(np.uint32) >> 16) << 16).view(np.float32)  # bf16 truncation
        np.testing.assert_array_equal(m.tensors[name], rounded, err_msg=name)


def test_hf_real_weights_round_trip(tmp_path: Path) -> None:
    """A HF directory made of the real SmolLM2 weights (2 layers) and tokenizer reads back identically."""
    real = smollm2_model()
    cfg = real.config.__class__(**{**real.config.__dict__, "n_layers": 2})
    keep = {k: v for k, v in real.tensors.items() if not k.startswith("blk.") or int(k.split(".")[1]) < 2}
    d = write_hf_dir(tmp_path / "smol", cfg, keep)
    write_tokenizer_files(d, real.tokenizer.tokenizer_json)
    m = load_model(d)
    assert m.config.n_layers == 2 and m.config.tie_embeddings and m.config.vocab_size == 49152
    for name, arr in keep.items():
        np.testing.assert_array_equal(m.tensors[name], arr, err_msg=name)
    assert m.tokenizer.tokenizer_json == real.tokenizer.tokenizer_json


def test_hf_errors(tmp_path: Path) -> None:
    cfg = tiny_config("llama")
    d = write_hf_dir(tmp_path / "hf", cfg, tiny_weights(cfg))
    shard = next(d.glob("model-00002*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises((ValueError, RuntimeError), match="model-00002-of-00002.safetensors"):
        load_model(d)

    # A header whose byte range does not fit the tensor's shape is refused up front, naming both.
    d3 = write_hf_dir(tmp_path / "hf3", cfg, tiny_weights(cfg))
    shard = next(d3.glob("model-00001*.safetensors"))
    data = bytearray(shard.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__" and len(header[k]["shape"]) == 2)
    header[name]["shape"] = [header[name]["shape"][0] + 1, header[name]["shape"][1]]
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n  # the new row count may take one more digit; safetensors writes no spaces
    text = text.ljust(n)
    shard.write_bytes(bytes(data[:8]) + text + bytes(data[8 + n :]))
    want = rf"model-00001-of-00002.safetensors: tensor {re.escape(name)} has \d+ bytes, F32"
    with pytest.raises(ValueError, match=want):
        load_model(d3)

    d2 = write_hf_dir(tmp_path / "hf2", cfg, tiny_weights(cfg))
    (d2 / "config.json").write_text('{"model_type": "gpt_neox", "hidden_size": 64}')
    with pytest.raises(ValueError, match="model_type 'gpt_neox' is not supported"):
        load_model(d2)


def test_hub_prefix_uses_snapshot_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    huggingface_hub = pytest.importorskip(
        "huggingface_hub", reason="huggingface_hub (the optional `hub` extra) is not installed"
    )
    cfg = tiny_config("qwen2")
    local = write_hf_dir(tmp_path / "snap", cfg, tiny_weights(cfg))
    calls = []

    def fake_snapshot_download(repo_id: str, allow_patterns: list[str]) -> str:
        calls.append(repo_id)
        assert "*.safetensors" in allow_patterns and "*.json" in allow_patterns
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    m = load_model("hf:Qwen/Tiny")
    assert calls == ["Qwen/Tiny"] and m.source == "hf:Qwen/Tiny" and m.config.architecture == "qwen2"

    def offline(repo_id: str, allow_patterns: list[str]) -> str:
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(RuntimeError, match="could not download hf:Qwen/Tiny: network is unreachable"):
        load_model("hf:Qwen/Tiny")


def test_hub_needs_huggingface_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import now raises ImportError
    with pytest.raises(RuntimeError, match=r"hf:org/name needs huggingface_hub"):
        load_model("hf:org/name")


@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_phi3_fused_split_is_lazy_and_converts_as_before(tmp_path: Path, kind: str) -> None:
    """Each part of Phi-3's fused qkv and gate_up is a lazy view of its rows of the fused tensor;
    the file converted from them is the one the split arrays (what the importer held) give."""
    from dataclasses import replace

    from edgelut.models.lazy import LazyTensors, RowSource, tensor_rows
    from edgelut.quantize.convert import convert
    from edgelut.quantize.recipe import Recipe

    cfg = tiny_config("phi3", tie_embeddings=True)
    w = tiny_weights(cfg, seed=7)
    src = write_gguf(tmp_path / "p.gguf", cfg, w) if kind == "gguf" else write_hf_dir(tmp_path / "p", cfg, w)
    m = load_model(src)
    assert isinstance(m.tensors, LazyTensors) and set(m.tensors) == set(w)
    for name in ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"):
        name = f"blk.1.{name}.weight"
        assert isinstance(m.tensors.source(name), RowSource), name
        np.testing.assert_array_equal(tensor_rows(m.tensors, name, 3, 11), w[name][3:11], err_msg=name)
    recipe = Recipe(qtype="q4", group_size=32)
    lazy = convert(m, tmp_path / "lazy.elut", recipe, progress=False)
    eager = convert(replace(m, tensors=dict(w)), tmp_path / "eager.elut", recipe, progress=False)
    assert lazy.read_bytes() == eager.read_bytes()


# --- ONNX ---------------------------------------------------------------------------------------


def test_onnx_tied_head_copy_is_recognised(tmp_path: Path) -> None:
    cfg = tiny_config("llama", tie_embeddings=True)
    w = tiny_weights(cfg, seed=4)
    w["output.weight"] = w["token_embd.weight"].copy()  # torch.onnx writes the tied head as a MatMul copy
    m = load_model(write_onnx(tmp_path / "tied", cfg, w))
    assert m.config.tie_embeddings and "output.weight" not in m.tensors


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
def test_onnx_round_trip(tmp_path: Path, arch: str) -> None:
    extra = (
        {"sliding_window": 8, "sliding_window_pattern": 2, "rope_local_theta": 1e4}
        if arch == "gemma3"
        else {}
    )
    cfg = tiny_config(arch, **extra)
    w = tiny_weights(cfg, seed=4)
    path = write_onnx(tmp_path / "onnx", cfg, w)
    for source in (path, tmp_path / "onnx"):
        m = load_model(source)
        assert m.config.n_layers == cfg.n_layers and m.config.attn_bias == (arch == "qwen2")
        assert set(m.tensors) == set(w)
        assert (m.config.qk_norm, m.config.post_norms) == (cfg.qk_norm, cfg.post_norms)
        for name, arr in w.items():
            # Gemma's norms went through w - 1 (the writer) and + 1 (the importer) in float32.
            np.testing.assert_allclose(m.tensors[name], arr, rtol=0, atol=1e-6, err_msg=name)


def test_onnx_real_weights_round_trip(tmp_path: Path) -> None:
    """The real SmolLM2 weights (2 layers) in an optimum-style export import exactly."""
    real = smollm2_model()
    cfg = real.config.__class__(**{**real.config.__dict__, "n_layers": 2})
    keep = {k: v for k, v in real.tensors.items() if not k.startswith("blk.") or int(k.split(".")[1]) < 2}
    path = write_onnx(tmp_path / "onnx", cfg, keep)
    write_tokenizer_files(path.parent, real.tokenizer.tokenizer_json)
    m = load_model(path)
    assert m.config.n_layers == 2 and m.config.tie_embeddings and m.config.hidden_size == 576
    for name, arr in keep.items():
        np.testing.assert_array_equal(m.tensors[name], arr, err_msg=name)
    assert m.tokenizer.tokenizer_json == real.tokenizer.tokenizer_json


def test_onnx_without_names_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tiny_config("llama")
    path = write_onnx(tmp_path / "anon", cfg, tiny_weights(cfg), module_names=False)
    with pytest.raises(ValueError, match="must keep parameter names"):
        load_model(path)


def test_onnx_not_onnx(tmp_path: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"\xff\xfe garbage" * 10)
    (d / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"model\.onnx: not a readable ONNX model"):
        load_model(d / "model.onnx")


def _eager_onnx(path: Path, arch: str) -> dict[str, np.ndarray]:
    """What the ONNX importer returned before it streamed: every initializer loaded (external data
    too), converted to float32 at once, MatMul weights transposed, orientation and a tied copy of
    the embedding resolved on whole arrays, Gemma's norms + 1."""
    import onnx
    from onnx import numpy_helper

    from edgelut.models.config import ARCHITECTURES
    from edgelut.models.importers.huggingface import config_from_hf, expected_shapes, read_json
    from edgelut.models.importers.onnx import module_param_from_node

    graph = onnx.load(str(path), load_external_data=True).graph
    inits = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}
    out = {hf_to_gguf_name(n, arch): a for n, a in inits.items() if hf_to_gguf_name(n, arch)}
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm") and node.input[1] in inits and node.input[1] not in out:
            gg = hf_to_gguf_name(module_param_from_node(node.name), arch)
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            out[gg] = inits[node.input[1]] if trans_b else inits[node.input[1]].T
    if ARCHITECTURES[arch].norm_plus_one:
        out = {k: v + np.float32(1.0) if k.endswith("norm.weight") else v for k, v in out.items()}
    head, emb = out.get("output.weight"), out["token_embd.weight"]
    if head is not None and (np.array_equal(head, emb) or np.array_equal(head.T, emb)):
        del out["output.weight"]
    cfg = config_from_hf(read_json(path.parent / "config.json"), path, tied="output.weight" not in out)
    for name, want in expected_shapes(cfg).items():
        if out[name].ndim == 2 and out[name].shape != want:
            out[name] = out[name].T
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


ONNX_LAYOUTS = [  # arch, external data, Gemm transB (else MatMul of W^T), dtype, tied head copy
    ("llama", True, False, "f32", True),
    ("llama", False, False, "f32", False),
    ("llama", True, True, "f16", False),
    ("qwen2", True, False, "bf16", False),
    ("qwen2", False, True, "bf16", True),
    ("gemma3", True, False, "f32", True),
    ("gemma3", False, False, "f16", False),
]


@pytest.mark.parametrize(("arch", "external", "gemm", "dtype", "tied"), ONNX_LAYOUTS)
def test_onnx_streams_what_the_eager_import_read(tmp_path, monkeypatch, arch, external, gemm, dtype, tied):
    """Lazy rows (read from the external file, or sliced from the proto's bytes) are the eager
    import's arrays, row range by row range, and convert to the same .elut bytes."""
    from dataclasses import replace

    from edgelut.models.importers import onnx as onnx_importer
    from edgelut.models.lazy import LazyTensors, tensor_rows
    from edgelut.quantize import convert as convert_module
    from edgelut.quantize.recipe import Recipe

    extra = (
        {"sliding_window": 8, "sliding_window_pattern": 2, "rope_local_theta": 1e4}
        if arch == "gemma3"
        else {}
    )
    cfg = tiny_config(arch, tie_embeddings=tied, **extra)
    w = tiny_weights(cfg, seed=5)
    if tied:
        w["output.weight"] = w["token_embd.weight"].copy()  # torch.onnx writes a tied head as a copy
    path = write_onnx(tmp_path / "m", cfg, w, external=external, gemm=gemm, dtype=dtype)
    assert (tmp_path / "m" / "model.onnx_data").is_file() == external
    # Small blocks, so that W^T reads take several blocks and both of their read patterns.
    monkeypatch.setattr(onnx_importer, "BLOCK_BYTES", 1000)
    monkeypatch.setattr(convert_module, "ROW_BLOCK_WEIGHTS", 64 * 64)
    lazy = load_model(path)
    eager = _eager_onnx(path, arch)
    assert isinstance(lazy.tensors, LazyTensors) and set(lazy.tensors) == set(eager)
    assert lazy.config.tie_embeddings == tied
    for name, want in eager.items():
        n = want.shape[0]
        for a, b in ((0, n), (1, 2), (n // 3, n - 1)):
            got = tensor_rows(lazy.tensors, name, a, b)
            assert got.dtype == np.float32 and got.flags.c_contiguous, name
            np.testing.assert_array_equal(got, want[a:b], err_msg=f"{name} [{a}, {b})")
    recipe = Recipe(qtype="q4", group_size=32)
    streamed = convert_module.convert(lazy, tmp_path / "lazy.elut", recipe, progress=False)
    whole = convert_module.convert(
        replace(lazy, tensors=eager), tmp_path / "eager.elut", recipe, progress=False
    )
    assert streamed.read_bytes() == whole.read_bytes()


def _external_entry(path: Path, tensor: str, **change: str) -> None:
    """Rewrites one initializer's external-data entry (location/offset/length) in the graph file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    t = next(t for t in proto.graph.initializer if t.name == tensor)
    entries = {e.key: e.value for e in t.external_data} | change
    del t.external_data[:]
    for key, value in entries.items():
        t.external_data.add(key=key, value=value)
    onnx.save(proto, str(path))


def test_onnx_bad_external_data_is_one_clear_error(tmp_path: Path) -> None:
    cfg = tiny_config("llama")
    w = tiny_weights(cfg)
    path = write_onnx(tmp_path / "m", cfg, w, external=True)
    data = tmp_path / "m" / "model.onnx_data"
    emb = "model.embed_tokens.weight"
    need = w["token_embd.weight"].nbytes
    (tmp_path / "model.onnx_data").write_bytes(data.read_bytes())  # there, but outside the model
    cases = [
        (
            {"offset": str(data.stat().st_size - 8)},
            rf"model\.onnx_data: tensor {emb} needs bytes \[\d+, \d+\) of a file of",
        ),
        ({"location": str(data)}, rf"model\.onnx: tensor {emb} has external data at absolute path"),
        (
            {"location": "../model.onnx_data"},
            rf"model\.onnx: tensor {emb} has external data '\.\./model\.onnx_data' outside",
        ),
        (
            {"length": str(need - 4)},
            rf"model\.onnx_data: tensor {emb} has {need - 4} bytes of external data, its shape needs {need}",
        ),
        ({"location": "gone.bin"}, rf"gone\.bin: cannot read the external data of tensor {emb}"),
        ({"offset": "ten"}, rf"model\.onnx_data: tensor {emb} has a malformed external data offset"),
    ]
    original, original_data = path.read_bytes(), data.read_bytes()
    for change, message in cases:
        path.write_bytes(original)
        _external_entry(path, emb, **change)
        with pytest.raises(ValueError, match=message) as e:
            load_model(path)
        assert "\n" not in str(e.value), str(e.value)
    # A graph that is fine apart from a truncated data file fails when it is checked, not midway.
    path.write_bytes(original)
    data.write_bytes(data.read_bytes()[: need // 2])
    with pytest.raises(ValueError, match=r"model\.onnx_data: tensor \S+ needs bytes"):
        load_model(path)
    # One cut after the import checked it fails at the read, naming the file.
    data.write_bytes(original_data)
    m = load_model(path)
    data.write_bytes(b"")
    with pytest.raises(RuntimeError, match=r"model\.onnx_data: truncated \(a tensor's bytes run past"):
        m.tensors["token_embd.weight"]


@pytest.mark.parametrize("external", [True, False])
def test_onnx_phi3_fused_tensors_split_lazily(tmp_path: Path, external: bool) -> None:
    """A Phi-3 export's qkv_proj and gate_up_proj MatMuls split as the HF and GGUF importers split them."""
    from model_fixtures import fuse_phi3

    from edgelut.models.lazy import RowSource, tensor_rows

    cfg = tiny_config("phi3", tie_embeddings=True)
    w = tiny_weights(cfg, seed=8)
    m = load_model(write_onnx(tmp_path / "phi", cfg, fuse_phi3(w, cfg), external=external))
    assert set(m.tensors) == set(w) and m.config.tie_embeddings
    for name, arr in w.items():
        np.testing.assert_array_equal(m.tensors[name], arr, err_msg=name)
    assert isinstance(m.tensors.source("blk.0.attn_k.weight"), RowSource)
    np.testing.assert_array_equal(
        tensor_rows(m.tensors, "blk.1.ffn_up.weight", 5, 9), w["blk.1.ffn_up.weight"][5:9]
    )


def test_onnx_skeleton_is_the_graph_without_its_raw_weights(tmp_path: Path) -> None:
    """The field walk gives the graph onnx parses, minus raw_data, and where each raw_data is."""
    import onnx

    from edgelut.models.importers.onnx import read_skeleton

    cfg = tiny_config("qwen2")
    path = write_onnx(tmp_path / "m", cfg, tiny_weights(cfg))
    skeleton, raws = read_skeleton(path)
    full = onnx.load(str(path))
    file_bytes = path.read_bytes()
    assert len(raws) == len(full.graph.initializer) and len(skeleton) < len(file_bytes) // 20
    for t, raw in zip(full.graph.initializer, raws, strict=True):
        assert raw is not None and file_bytes[raw[0] : raw[0] + raw[1]] == t.raw_data, t.name
        t.ClearField("raw_data")
    assert onnx.ModelProto.FromString(skeleton) == full
    # A cut file is refused as unreadable, naming it.
    path.write_bytes(file_bytes[: len(file_bytes) // 2])
    with pytest.raises(
        ValueError, match=r"model\.onnx: not a readable ONNX model \(ValueError: a field at byte"
    ):
        load_model(path)


def test_onnx_values_in_typed_fields(tmp_path: Path) -> None:
    """Initializers may hold values in float_data / int32_data (16-bit bits) instead of raw_data."""
    import onnx
    from onnx import TensorProto, helper

    cfg = tiny_config("llama")
    w = tiny_weights(cfg)
    path = write_onnx(tmp_path / "m", cfg, w)
    proto = onnx.load(str(path))
    typed = {
        "model.norm.weight": (TensorProto.FLOAT, w["output_norm.weight"]),
        "model.layers.1.input_layernorm.weight": (TensorProto.FLOAT16, w["blk.1.attn_norm.weight"]),
        "model.embed_tokens.weight": (TensorProto.FLOAT16, w["token_embd.weight"]),
    }
    for t in proto.graph.initializer:
        if t.name in typed:
            kind, arr = typed[t.name]
            vals = arr.astype(np.float16) if kind == TensorProto.FLOAT16 else arr
            t.CopyFrom(helper.make_tensor(t.name, kind, arr.shape, vals.reshape(-1), raw=False))
            assert not t.HasField("raw_data")
    onnx.save(proto, str(path))
    m = load_model(path)
    np.testing.assert_array_equal(m.tensors["output_norm.weight"], w["output_norm.weight"])
    for name in ("blk.1.attn_norm.weight", "token_embd.weight"):
        np.testing.assert_array_equal(m.tensors[name], w[name].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(m.tensors["blk.0.attn_norm.weight"], w["blk.0.attn_norm.weight"])


def test_onnx_unsupported_weight_type_is_named(tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    cfg = tiny_config("llama")
    path = write_onnx(tmp_path / "m", cfg, tiny_weights(cfg))
    proto = onnx.load(str(path))
    norm = next(t for t in proto.graph.initializer if t.name == "model.norm.weight")
    norm.CopyFrom(numpy_helper.from_array(np.ones(cfg.hidden_size, np.int32), "model.norm.weight"))
    onnx.save(proto, str(path))
    with pytest.raises(ValueError, match=r"model\.onnx: tensor model\.norm\.weight has data type INT32"):
        load_model(path)
    # raw_data whose length does not fit the tensor's shape
    norm.CopyFrom(numpy_helper.from_array(np.ones(cfg.hidden_size, np.float32), "model.norm.weight"))
    norm.dims[0] = cfg.hidden_size + 1
    onnx.save(proto, str(path))
    need = 4 * (cfg.hidden_size + 1)
    with pytest.raises(
        ValueError, match=rf"model\.norm\.weight has {need - 4} bytes, its shape needs {need}"
    ):
        load_model(path)


# --- dispatch -----------------------------------------------------------------------------------


def test_registry_and_dispatch(tmp_path: Path) -> None:
    from edgelut.models.importers import _register_builtin

    _register_builtin()  # normally done by the first load_model/find_importer
    assert {"elut", "gguf", "huggingface", "onnx"} <= set(IMPORTERS)
    assert all(issubclass(c, Importer) for c in IMPORTERS.values())
    cfg = tiny_config("llama")
    w = tiny_weights(cfg)
    assert find_importer(write_gguf(tmp_path / "a.gguf", cfg, w)).format_name == "gguf"
    assert find_importer(write_hf_dir(tmp_path / "hf", cfg, w)).format_name == "huggingface"
    assert find_importer(write_onnx(tmp_path / "ox", cfg, w)).format_name == "onnx"
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt: not a model edgelut can import"):
        load_model(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="unknown source format"):
        load_model(tmp_path / "a.gguf", fmt="tflite")


# --- cut to the first layers; edgelut's own files; the real Qwen2.5 GGUF --------------------------


def test_gguf_layers_keeps_the_first_blocks(tmp_path: Path) -> None:
    from edgelut.models.importers.gguf import load_gguf

    cfg = tiny_config("qwen2")
    w = tiny_weights(cfg)
    path = write_gguf(tmp_path / "t.gguf", cfg, w)
    m = load_gguf(path, layers=1)
    assert m.config.n_layers == 1
    assert not any(n.startswith("blk.1.") for n in m.tensors)
    np.testing.assert_array_equal(m.tensors["blk.0.attn_q.bias"], w["blk.0.attn_q.bias"])
    np.testing.assert_array_equal(m.tensors["output.weight"], w["output.weight"])
    with pytest.raises(ValueError, match=r"layers must be 1\.\.2, got 3"):
        load_gguf(path, layers=3)


def test_elut_model_file_imports_as_dequantised_weights(tmp_path: Path) -> None:
    from edgelut.models.modelfile import read_model_file
    from edgelut.quantize.convert import convert
    from edgelut.quantize.recipe import Recipe

    cfg = tiny_config("llama")
    src = load_model(write_gguf(tmp_path / "t.gguf", cfg, tiny_weights(cfg)))
    out = convert(src, tmp_path / "t.elut", Recipe(qtype="q3", group_size=32), progress=False)
    assert find_importer(out).format_name == "elut"
    m = load_model(out)
    f = read_model_file(out)
    assert m.config.n_layers == cfg.n_layers and m.tokenizer.tokenizer_json == f.tokenizer.tokenizer_json
    for name in f.names():
        t = f.tensor(name)
        want = t.dequantize() if hasattr(t, "dequantize") else t
        np.testing.assert_array_equal(m.tensors[name], want, err_msg=name)
    # The packed weights are close to, not equal to, the source.
    q = m.tensors["blk.0.ffn_up.weight"]
    assert 0 < np.abs(q - src.tensors["blk.0.ffn_up.weight"]).max() < 0.5 * np.abs(q).max()


@pytest.mark.slow
def test_real_qwen2_gguf_k_quants_and_bias() -> None:
    """Qwen2.5-Coder-0.5B (Q5_0/Q8_0/Q6_K/Q4_K mix): qwen2 config, QKV bias, no q/k permutation."""
    import gguf

    from edgelut.models.importers.gguf import load_gguf

    qwen = real_model.qwen_gguf()
    m = load_gguf(qwen, layers=2)
    c = m.config
    assert (c.architecture, c.hidden_size, c.n_heads, c.n_kv_heads, c.head_dim) == ("qwen2", 896, 14, 2, 64)
    assert c.attn_bias and c.rope_style == "neox" and c.n_layers == 2
    assert not c.tie_embeddings and m.tensors["output.weight"].shape == (151936, 896)  # this GGUF has its own
    assert m.tensors["blk.0.attn_q.bias"].shape == (896,) and m.tensors["blk.0.attn_k.bias"].shape == (128,)
    reader = gguf.GGUFReader(str(qwen))
    types = {t.tensor_type.name for t in reader.tensors if t.name.startswith(("blk.0.", "blk.1.", "token"))}
    assert {"Q5_0", "Q8_0"} & types and {"Q6_K", "Q4_K"} & types, types
    for t in reader.tensors:
        if t.name in m.tensors and t.name.startswith("blk.") and len(t.shape) == 2:
            raw = gguf.quants.dequantize(t.data, t.tensor_type).reshape(m.tensors[t.name].shape)
            np.testing.assert_array_equal(raw, m.tensors[t.name], err_msg=t.name)  # qwen2: not permuted


def test_gguf_row_blocks_of_permuted_qk_equal_the_whole_tensor(tmp_path: Path) -> None:
    # The streaming converter reads a permuted q/k tensor a block of rows at a time; each block
    # is widened to whole heads and un-permuted alone, and must equal the same rows of the whole.
    import gguf

    from edgelut.models.importers.gguf import _code_rows, _float_rows, _RawRows, unpermute_rows

    rng = np.random.default_rng(0)
    n_head, hd, k = 4, 8, 64
    w = rng.standard_normal((n_head * hd, k)).astype(np.float32)
    q1 = gguf.GGMLQuantizationType.Q4_1
    q = gguf.quants.quantize(w, q1)
    f = tmp_path / "rows.bin"
    f.write_bytes(q.tobytes())
    raw = _RawRows(f, 0, q.nbytes, w.shape)
    floats, codes = _float_rows(raw, q1, n_head), _code_rows(raw, "Q4_1", n_head)
    whole, whole_codes = floats(0, w.shape[0]), codes(0, w.shape[0])
    np.testing.assert_array_equal(
        whole, unpermute_rows(gguf.quants.dequantize(q, q1).reshape(w.shape), n_head)
    )
    for a, b in [(0, 5), (3, 17), (8, 16), (13, 32), (31, 32)]:
        np.testing.assert_array_equal(floats(a, b), whole[a:b])
        for part, full in zip(codes(a, b), whole_codes, strict=True):
            np.testing.assert_array_equal(part, full[a:b])
