"""Hugging Face directory importer: config.json + *.safetensors + tokenizer files.

Also home of the HF -> GGUF tensor-name map and the config/tokenizer readers
that the ONNX importer reuses (optimum exports keep HF names and files).
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from edgelut.models.config import ARCHITECTURES, ImportedModel, ModelConfig, TokenizerData, expected_tensors
from edgelut.models.importers import Importer, ModelNotFoundError, register_importer
from edgelut.models.lazy import LazyTensors, RowSource, pread_exact, tensor_shape, to_float32

# HF model_type -> edgelut architecture (Mistral is a llama with a sliding window).
MODEL_TYPES = {t: arch for arch, traits in ARCHITECTURES.items() for t in traits.hf_model_types}

_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    # BitNet's norms before o_proj and down_proj.
    "self_attn.attn_sub_norm.weight": "attn_sub_norm.weight",
    "mlp.ffn_sub_norm.weight": "ffn_sub_norm.weight",
    # Phi-3 fuses them; split_fused() cuts them apart after import.
    "self_attn.qkv_proj.weight": "attn_qkv.weight",
    "mlp.gate_up_proj.weight": "ffn_up.weight",
}
# Families with norms around both blocks (Gemma 3) name them differently: their
# post_attention_layernorm normalises the attention output, not the FFN input.
_POST_NORM_NAMES = {
    **_LAYER_NAMES,
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# A multimodal checkpoint (Gemma 3 4B+) keeps the text decoder under this prefix.
_TEXT_PREFIX = "language_model."


def _layer_names(arch: str) -> dict[str, str]:
    return _POST_NORM_NAMES if ARCHITECTURES[arch].post_norms else _LAYER_NAMES


def hf_to_gguf_name(name: str, arch: str = "llama") -> str | None:
    """GGUF name for an HF parameter name, or None if it is not a model weight we use."""
    name = name.removeprefix(_TEXT_PREFIX)
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _LAYER_RE.match(name)
    names = _layer_names(arch)
    if m and m.group(2) in names:
        return f"blk.{m.group(1)}.{names[m.group(2)]}"
    return None


def gguf_to_hf_name(name: str, arch: str = "llama") -> str:
    """Inverse of :func:`hf_to_gguf_name` (for writers and tests)."""
    for hf, gg in _GLOBAL_NAMES.items():
        if gg == name:
            return hf
    m = re.match(r"^blk\.(\d+)\.(.+)$", name)
    if m:
        for hf, gg in _layer_names(arch).items():
            if gg == m.group(2):
                return f"model.layers.{m.group(1)}.{hf}"
    raise ValueError(f"no Hugging Face name for tensor {name!r}")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelNotFoundError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def llama3_freq_factors(scaling: dict[str, Any], theta: float, head_dim: int) -> list[float]:
    """Per-frequency divisors of Llama 3.1 RoPE scaling (what llama.cpp stores as rope_freqs.weight).

    Wavelengths shorter than original_context/high_freq_factor are kept, longer than
    original_context/low_freq_factor are divided by ``factor``, and the band between
    is interpolated smoothly.
    """
    factor = float(scaling["factor"])
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return out


def split_fused(tensors: dict[str, Any], config: ModelConfig) -> None:
    """Phi-3's fused tensors, in place: attn_qkv -> attn_q/k/v, an ffn_up of 2F rows -> ffn_gate, ffn_up.

    Works on anything sliceable by rows (float weights, and the codes/scales/mins
    of a Q4 source), given as a dict name -> array or name -> tuple of arrays. In a
    :class:`LazyTensors`, a part of a lazy tensor stays lazy: it reads only its own
    rows of the fused one when asked (the split is by rows of W).
    """
    q, kv = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    f = config.intermediate_size
    lazy = isinstance(tensors, LazyTensors)

    def stored(name: str) -> Any:
        return tensors.source(name) if lazy else tensors[name]  # type: ignore[attr-defined]

    def put(name: str, t: Any, a: int, b: int) -> None:
        if isinstance(t, RowSource):
            tensors.add(name, _row_range(t, a, b))  # type: ignore[attr-defined]
        elif isinstance(t, tuple):  # (codes, scales, mins); ternary codes have no mins
            tensors[name] = tuple(None if x is None else x[a:b] for x in t)
        else:
            tensors[name] = np.ascontiguousarray(t[a:b])

    for i in range(config.n_layers):
        p = f"blk.{i}."
        if p + "attn_qkv.weight" in tensors:
            qkv = stored(p + "attn_qkv.weight")
            del tensors[p + "attn_qkv.weight"]
            put(p + "attn_q.weight", qkv, 0, q)
            put(p + "attn_k.weight", qkv, q, q + kv)
            put(p + "attn_v.weight", qkv, q + kv, q + 2 * kv)
        if p + "ffn_up.weight" not in tensors:
            continue
        up = stored(p + "ffn_up.weight")
        n = (up[0] if isinstance(up, tuple) else up).shape[0]
        if n == 2 * f and p + "ffn_gate.weight" not in tensors:  # gate first, then up (HF chunk(2))
            put(p + "ffn_gate.weight", up, 0, f)
            put(p + "ffn_up.weight", up, f, 2 * f)


def _row_range(src: RowSource, start: int, stop: int) -> RowSource:
    """Rows [start, stop) of a lazy tensor, as a lazy tensor of its own."""
    return RowSource((stop - start, *src.shape[1:]), lambda a, b: src.read_rows(start + a, start + b))


def split_specs(specs: dict[str, Any]) -> None:
    """ImportedModel.source_specs of fused tensors, split in place as split_fused splits the tensors."""
    for name in list(specs):
        if name.endswith("attn_qkv.weight"):
            spec = specs.pop(name)
            for part in "qkv":
                specs[name.replace("attn_qkv", f"attn_{part}")] = spec
        elif name.endswith("ffn_up.weight"):
            specs[name.replace("ffn_up", "ffn_gate")] = specs[name]


def longrope(scaling: dict[str, Any], max_pos: int, original: int, attn_factor: Any = None) -> dict[str, Any]:
    """Phi-3 LongRoPE: the short factors within the original context, the long ones past it,
    and the cos/sin factor.

    HF multiplies cos and sin by sqrt(1 + ln(scale) / ln(original)), scale =
    max_position_embeddings / original, unless the config gives attention_factor.
    """
    scale = max_pos / original
    if attn_factor is None:
        attn_factor = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0
    short = [float(x) for x in scaling["short_factor"]]
    long = scaling.get("long_factor")
    if long is None or max_pos <= original:  # nothing past the original context
        return {
            "rope_scaling": {"type": "freq_factors", "factors": short},
            "rope_mscale": float(attn_factor),
            "context_length": int(original),
        }
    return {
        "rope_scaling": {
            "type": "longrope",
            "factors": short,
            "long_factors": [float(x) for x in long],
            "original_context": int(original),
        },
        "rope_mscale": float(attn_factor),
        "context_length": int(max_pos),
    }


def arch_of(cfg: dict[str, Any], path: Path) -> str:
    """The edgelut architecture of a config.json (its model_type), or a one-line error."""
    model_type = cfg.get("model_type")
    arch = MODEL_TYPES.get(str(model_type))
    if arch is None:
        raise ValueError(
            f"{path}: model_type {model_type!r} is not supported (supported: {', '.join(MODEL_TYPES)})"
        )
    return arch


def _bitnet(cfg: dict[str, Any], arch: str, path: Path) -> dict[str, Any]:
    """BitNet's gate activation: ReLU^2 (2B-4T) or SiLU (the 1bitLLM models)."""
    if arch != "bitnet":
        return {}
    act = str(cfg.get("hidden_act", "relu2"))
    if act not in ("relu2", "silu"):
        raise ValueError(f"{path}: BitNet hidden_act {act!r} is not supported (relu2, silu)")
    return {"ffn_act": act}


def _sliding(cfg: dict[str, Any], arch: str, path: Path) -> dict[str, Any]:
    """Gemma 3's sliding-window layers: window, period of global layers, local RoPE base."""
    if arch != "gemma3":
        return {}
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if cfg.get(key) is not None:
            raise ValueError(f"{path}: {key} is set; edgelut runs Gemma 3, which has no soft-capping")
    window = int(cfg.get("sliding_window") or 0)
    pattern = int(cfg.get("sliding_window_pattern") or 6)
    layer_types = cfg.get("layer_types")
    if layer_types:  # newer configs list every layer: "sliding_attention" / "full_attention"
        sliding = [t == "sliding_attention" for t in layer_types]
        pattern = next((i + 1 for i, s in enumerate(sliding) if not s), 0)
        if sliding != [pattern == 0 or (i + 1) % pattern != 0 for i in range(len(sliding))]:
            raise ValueError(f"{path}: layer_types is not a periodic sliding/full pattern")
    scalar = cfg.get("query_pre_attn_scalar")
    return {
        "sliding_window": window,
        "sliding_window_pattern": pattern,
        "rope_local_theta": float(cfg.get("rope_local_base_freq", 10000.0)),
        "attn_scale": float(scalar) ** -0.5 if scalar else 0.0,
    }


def config_from_hf(cfg: dict[str, Any], path: Path, tied: bool, bias: bool | None = None) -> ModelConfig:
    """ModelConfig from a transformers config.json dictionary."""
    arch = arch_of(cfg, path)
    if "text_config" in cfg:  # multimodal Gemma 3: the decoder's hyper-parameters are nested
        cfg = {**cfg["text_config"], "model_type": cfg.get("model_type")}
    try:
        hidden = int(cfg["hidden_size"])
        n_heads = int(cfg["num_attention_heads"])
        head_dim = int(cfg.get("head_dim") or hidden // n_heads)
        extra: dict[str, Any] = {"context_length": int(cfg.get("max_position_embeddings", 2048))}
        if cfg.get("partial_rotary_factor", 1.0) != 1.0:
            extra["rope_dim"] = int(head_dim * float(cfg["partial_rotary_factor"]))
        scaling = cfg.get("rope_scaling")
        if scaling:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind == "default":
                scaling = None
            elif kind in ("longrope", "su"):
                original = int(cfg.get("original_max_position_embeddings") or extra["context_length"])
                extra |= longrope(scaling, extra["context_length"], original, scaling.get("attention_factor"))
                scaling = extra.pop("rope_scaling")
            elif kind == "linear":
                scaling = {"type": "linear", "factor": float(scaling["factor"])}
            elif kind == "llama3":
                factors = llama3_freq_factors(scaling, float(cfg.get("rope_theta", 10000.0)), head_dim)
                scaling = {"type": "freq_factors", "factors": factors}
            else:
                raise ValueError(f"{path}: rope_scaling type {kind!r} is not supported (linear, llama3)")
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else []))
        bos = cfg.get("bos_token_id")
        return ModelConfig(
            architecture=arch,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            n_layers=int(cfg["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
            head_dim=head_dim,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rope_style="neox",
            rope_scaling=scaling,
            tie_embeddings=tied,
            attn_bias=ARCHITECTURES[arch].attn_bias if bias is None else bias,
            bos_token_id=None if bos is None else int(bos),
            eos_token_ids=eos_ids,
            name=str(cfg.get("_name_or_path", path.name)),
            **_sliding(cfg, arch, path),
            **_bitnet(cfg, arch, path),
            **extra,
        )
    except KeyError as e:
        raise ValueError(f"{path}: config.json lacks {e.args[0]!r}") from e


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json holds special tokens as strings or as AddedToken dicts.
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def tokenizer_from_dir(directory: Path) -> TokenizerData:
    """TokenizerData from tokenizer.json (+ tokenizer_config.json, chat_template.jinja)."""
    tj = directory / "tokenizer.json"
    if not tj.is_file():
        raise ValueError(f"{directory}: no tokenizer.json (edgelut needs a fast-tokenizer file)")
    text = tj.read_text(encoding="utf-8")
    tc_path = directory / "tokenizer_config.json"
    tc = read_json(tc_path) if tc_path.is_file() else {}
    template = tc.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    jinja_file = directory / "chat_template.jinja"
    if template is None and jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    bos, eos = _token_text(tc.get("bos_token")), _token_text(tc.get("eos_token"))
    add_bos = tc.get("add_bos_token")
    if add_bos is None:
        # Ask the tokenizer itself whether its post-processor prepends BOS.
        from tokenizers import Tokenizer as HFTokenizer

        tk = HFTokenizer.from_str(text)
        bos_id = tk.token_to_id(bos) if bos else None
        add_bos = bos_id is not None and tk.encode("a", add_special_tokens=True).ids[:1] == [bos_id]
    return TokenizerData(
        tokenizer_json=text, chat_template=template, bos_token=bos, eos_token=eos, add_bos=bool(add_bos)
    )


_SAFETENSORS_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "F64": np.float64,
    "BF16": np.uint16,  # numpy has no bfloat16: read as bits and widened (the top half of a float32)
    "I64": np.int64,
    "I32": np.int32,
    "U8": np.uint8,
}


def safetensors_sources(path: Path) -> dict[str, RowSource]:
    """Every tensor of one .safetensors file as a RowSource that reads its rows with pread.

    The header is checked against the file up front (dtype, each tensor's byte range against
    its shape and the file's size), so a bad file fails here, naming it, not halfway through a
    conversion. Rows come back as stored (bf16 widened to float32); nothing is mapped, so
    the rows a converter has read do not stay in its RSS.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                raise ValueError(f"header of {n} bytes in a file of {size}")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        header.pop("__metadata__", None)
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a safetensors file ({e})") from e
    base, data_size = 8 + n, size - 8 - n
    out: dict[str, RowSource] = {}
    for name, info in header.items():
        try:
            dtype, shape = info["dtype"], tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (TypeError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: tensor {name} has a malformed header entry ({e})") from e
        if dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        np_dtype = np.dtype(_SAFETENSORS_DTYPES[dtype])
        if any(d < 0 for d in shape) or not 0 <= begin <= end:
            raise ValueError(f"{path}: tensor {name} has an impossible shape or byte range")
        need = math.prod(shape) * np_dtype.itemsize
        if end - begin != need:
            raise ValueError(f"{path}: tensor {name} has {end - begin} bytes, {dtype} {shape} needs {need}")
        if end > data_size:
            raise RuntimeError(f"{path}: truncated safetensors file (tensor {name})")
        out[name] = RowSource(shape, _safetensors_rows(path, base + begin, np_dtype, dtype == "BF16", shape))
    return out


def _safetensors_rows(path: Path, offset: int, dtype: np.dtype, bf16: bool, shape: tuple[int, ...]):  # noqa: ANN202
    row = math.prod(shape[1:]) * dtype.itemsize if shape else dtype.itemsize

    def read(a: int, b: int) -> np.ndarray:
        if not shape:
            a, b = 0, 1
        arr = np.empty((b - a) * row // dtype.itemsize, dtype=dtype)
        with open(path, "rb") as f:
            pread_exact(f.fileno(), arr, offset + a * row, f"{path}: truncated safetensors file")
        if bf16:
            arr = to_float32(arr, True)
        return arr.reshape(shape if not shape else (b - a, *shape[1:]))

    return read


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as numpy arrays; bfloat16 widened to float32."""
    return {name: _read_all(src) for name, src in safetensors_sources(path).items()}


def _read_all(src: RowSource) -> np.ndarray:
    return src.read_rows(0, src.shape[0] if src.shape else 1)  # a 0-d tensor is one "row"


def finish_import(
    raw: dict[str, Any], cfg_json: dict[str, Any], path: Path, tokenizer: TokenizerData
) -> ImportedModel:
    """HF-named tensors -> ImportedModel (renamed, float32, shape-checked).

    Gemma's norms compute x * (1 + w) in float32; the float32 sum is stored,
    so x * w' is the same product bit for bit.
    """
    from edgelut.models.importers.lowbit import dequantize_checkpoint, quant_format

    arch = arch_of(cfg_json, path)
    plus_one = ARCHITECTURES[arch].norm_plus_one
    fmt = quant_format(cfg_json, path)
    layers: dict[str, Any] = {}
    if fmt is not None:
        raw, layers = dequantize_checkpoint(raw, fmt, path)
    # A RowSource (a float checkpoint read lazily) stays lazy: the converter then holds one
    # tensor, or a block of rows of one, at a time, not the float model.
    tensors = LazyTensors()
    for name, arr in raw.items():
        gg = hf_to_gguf_name(name, arch)
        if gg is None:
            continue
        norm_plus_one = plus_one and gg.endswith("norm.weight")
        if isinstance(arr, RowSource):
            tensors.add(gg, RowSource(arr.shape, _float32_rows(arr, norm_plus_one)))
        else:
            tensors[gg] = np.ascontiguousarray(arr, dtype=np.float32)
            if norm_plus_one:
                tensors[gg] = tensors[gg] + np.float32(1.0)
    if "token_embd.weight" not in tensors:
        raise ValueError(f"{path}: no model.embed_tokens.weight among the weights")
    config = config_from_hf(
        cfg_json, path, tied="output.weight" not in tensors, bias="blk.0.attn_q.bias" in tensors
    )
    split_fused(tensors, config)
    check_tensors(tensors, config, path)
    model = ImportedModel(config=config, tensors=tensors, tokenizer=tokenizer, source=str(path))
    if fmt is not None:
        from edgelut.models.importers.lowbit import attach_codes

        attach_codes(model, {hf_to_gguf_name(k, arch): v for k, v in layers.items()}, fmt)
    return model


def _float32_rows(src: RowSource, plus_one: bool):  # noqa: ANN202
    def read(a: int, b: int) -> np.ndarray:
        w = np.ascontiguousarray(src.read_rows(a, b), dtype=np.float32)
        return w + np.float32(1.0) if plus_one else w

    return read


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    return expected_tensors(config)


def check_tensors(tensors: dict[str, np.ndarray], config: ModelConfig, path: Path) -> None:
    for name, shape in expected_shapes(config).items():
        if name not in tensors:
            raise ValueError(f"{path}: missing weight {gguf_to_hf_name(name, config.architecture)} ({name})")
        got = tensor_shape(tensors, name)
        if got != shape:
            raise ValueError(f"{path}: {name} has shape {got}, expected {shape}")


@register_importer("huggingface")
class HuggingFaceImporter(Importer):
    @classmethod
    def can_load(cls, path: Path) -> bool:
        directory = path.parent if path.is_file() and path.suffix == ".safetensors" else path
        return (
            directory.is_dir()
            and (directory / "config.json").is_file()
            and any(directory.glob("*.safetensors"))
        )

    def load(self, path: Path) -> ImportedModel:
        directory = path.parent if path.is_file() else path
        if not directory.is_dir():
            raise ModelNotFoundError(f"{path}: no such model directory")
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise ValueError(f"{directory}: no *.safetensors files")
        cfg = read_json(directory / "config.json")
        raw: dict[str, Any] = {}
        for f in files:
            raw.update(safetensors_sources(f))
        from edgelut.models.importers.lowbit import quant_format

        if quant_format(cfg, directory) is not None:  # low-bit codes are converted whole
            raw = {name: _read_all(src) for name, src in raw.items()}
        return finish_import(raw, cfg, directory, tokenizer_from_dir(directory))
