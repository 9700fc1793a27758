"""GGUF importer (llama.cpp's format), built on the ``gguf`` package's reader.

The reader and dequantisation come from ``gguf``; this file only maps
metadata to :class:`ModelConfig`, reshapes tensors to (N, K) float32 and undoes
llama.cpp's Q/K row permutation. llama.cpp's converter permutes the rows of
HF ``q_proj``/``k_proj`` of ``llama`` models so that RoPE can rotate adjacent
pairs; we invert it so every importer returns HF orientation (NeoX RoPE).
Qwen2/3 and Gemma 3 GGUFs are not permuted (llama.cpp runs NeoX RoPE for
them); ``ArchTraits.gguf_permuted_qk`` says which are. llama.cpp's converter
already folded Gemma's ``(1 + w)`` into the norm weights, so they are read as
they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgelut.models.config import (
    ARCHITECTURES,
    SUPPORTED_ARCHITECTURES,
    ImportedModel,
    ModelConfig,
    TokenizerData,
)
from edgelut.models.importers import Importer, ModelNotFoundError, register_importer

GGUF_MAGIC = b"GGUF"
Q4_GROUP = 32


def _require_gguf() -> Any:
    try:
        import gguf
    except ImportError as e:  # a hard dependency, but say what to do
        raise RuntimeError("reading GGUF files needs the `gguf` package (pip install gguf)") from e
    return gguf


def field_value(reader: Any, key: str, default: Any = None) -> Any:
    """A metadata value as a Python object (str, int, float, bool or list)."""
    f = reader.fields.get(key)
    if f is None:
        return default
    if hasattr(f, "contents"):  # gguf >= 0.14
        return f.contents()
    # Older gguf: data indexes the parts that hold the value(s).
    gguf = _require_gguf()
    vtype = f.types[-1]
    values = [
        bytes(f.parts[i]).decode("utf-8") if vtype == gguf.GGUFValueType.STRING else f.parts[i].tolist()[0]
        for i in f.data
    ]
    return values if f.types[0] == gguf.GGUFValueType.ARRAY else values[0]


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp's q/k permutation on the rows (axis 0) of ``w``.

    The converter maps HF row ``h*d + j*(d/2) + i`` (j = 0/1: first/second half
    of the head) to GGUF row ``h*d + 2*i + j``; reading GGUF rows as
    (head, i, j) and swapping back to (head, j, i) restores HF order.
    """
    rows = w.shape[0]
    half = rows // n_head // 2
    rest = w.shape[1:]
    return w.reshape(n_head, half, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> llama.cpp row order (what convert_hf_to_gguf does); for tests and writers."""
    rows = w.shape[0]
    half = rows // n_head // 2
    rest = w.shape[1:]
    return w.reshape(n_head, 2, half, *rest).swapaxes(1, 2).reshape(rows, *rest)


def q4_codes(
    blocks: np.ndarray, qtype_name: str, n: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_0/Q4_1 raw blocks -> (codes int8 (N,K) 0..15, scales (N,K/32), mins (N,K/32)).

    Both become w = scale * code + min: Q4_0 is d * (q - 8), so min = -8 d;
    Q4_1 is d * q + m. Values are exact fp16 numbers held in float32.
    """
    header = 2 if qtype_name == "Q4_0" else 4
    raw = np.ascontiguousarray(blocks).reshape(n * (k // Q4_GROUP), header + Q4_GROUP // 2)
    d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)[:, 0]
    if qtype_name == "Q4_0":
        m = np.float32(-8.0) * d
    else:
        m = raw[:, 2:4].copy().view(np.float16).astype(np.float32)[:, 0]
    qs = raw[:, header:]
    # Element j of a block is in the low nibble of byte j, element j+16 in the high nibble.
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8)
    groups = k // Q4_GROUP
    return codes.reshape(n, k), d.reshape(n, groups), m.reshape(n, groups)


def is_edgelut_model_file(path: Path) -> bool:
    """A GGUF container whose metadata carries edgelut's format version key (cheap: reads 64 KiB)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    return head[:4] == GGUF_MAGIC and b"edgelut.format_version" in head


def f32(value: Any) -> float:
    """A GGUF float32 as the shortest decimal that rounds to it (9.9999997e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def _rope_scaling(reader: Any, arch: str) -> dict | None:
    kind = field_value(reader, f"{arch}.rope.scaling.type")
    factor = field_value(reader, f"{arch}.rope.scaling.factor")
    if kind in (None, "none") or not factor or float(factor) == 1.0:
        return None
    if kind != "linear":
        raise ValueError(f"rope scaling type {kind!r} is not supported (only linear)")
    return {"type": "linear", "factor": f32(factor)}


# llama.cpp's Gemma 3 GGUFs carry the window but neither the layer pattern nor the RoPE base
# of the sliding layers: its loader fixes them, as Gemma 3's config.json does (every 6th
# layer global, local base 10000). Newer converters may write them; those keys win.
_SWA_DEFAULTS = {"gemma3": (6, 10000.0)}


def _sliding(reader: Any, arch: str) -> dict[str, Any]:
    window = field_value(reader, f"{arch}.attention.sliding_window")
    if not window:
        return {}
    pattern, local_theta = _SWA_DEFAULTS.get(arch, (0, 0.0))
    pattern = field_value(reader, f"{arch}.attention.sliding_window_pattern", pattern)
    local_theta = field_value(reader, f"{arch}.rope.freq_base_swa", local_theta)
    if isinstance(pattern, list):  # per-layer booleans (true = sliding): recover the period
        period = next((i + 1 for i, sliding in enumerate(pattern) if not sliding), 0)
        if [bool(v) for v in pattern] != [period == 0 or (i + 1) % period != 0 for i in range(len(pattern))]:
            raise ValueError(f"sliding-window layer pattern {pattern} is not periodic")
        pattern = period
    return {
        "sliding_window": int(window),
        "sliding_window_pattern": int(pattern),
        "rope_local_theta": f32(local_theta),
    }


def config_from_metadata(reader: Any, path: Path, n_vocab_tensor: int, tied: bool, bias: bool) -> ModelConfig:
    arch = field_value(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{path}: architecture {arch!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )

    def get(key: str, default: Any = None) -> Any:
        value = field_value(reader, f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"{path}: GGUF metadata lacks {arch}.{key}")
        return value

    hidden = int(get("embedding_length"))
    n_heads = int(get("attention.head_count"))
    head_dim = int(field_value(reader, f"{arch}.attention.key_length", hidden // n_heads))
    eos = field_value(reader, "tokenizer.ggml.eos_token_id")
    eot = field_value(reader, "tokenizer.ggml.eot_token_id")
    eos_ids = tuple(dict.fromkeys(int(t) for t in (eos, eot) if t is not None))
    bos = field_value(reader, "tokenizer.ggml.bos_token_id")
    return ModelConfig(
        architecture=arch,
        vocab_size=int(field_value(reader, f"{arch}.vocab_size", n_vocab_tensor)),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        n_layers=int(get("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(field_value(reader, f"{arch}.attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        rms_norm_eps=f32(get("attention.layer_norm_rms_epsilon")),
        rope_theta=f32(field_value(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_style="neox",  # after un-permuting, every supported GGUF is in HF (NeoX) order
        rope_scaling=_rope_scaling(reader, arch),
        context_length=int(field_value(reader, f"{arch}.context_length", 2048)),
        tie_embeddings=tied,
        attn_bias=bias,
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=eos_ids,
        name=str(field_value(reader, "general.name", path.stem)),
        **_sliding(reader, arch),
    )


def tokenizer_from_metadata(reader: Any, path: Path) -> TokenizerData:
    return _tokenizer_and_turn_ends(reader, path)[0]


def _tokenizer_and_turn_ends(reader: Any, path: Path) -> tuple[TokenizerData, list[int]]:
    """The tokenizer, and the ids of its end-of-turn tokens (stop tokens for chat)."""
    from edgelut.models.chat_templates import DEFAULT_TEMPLATES, end_of_turn_ids
    from edgelut.tokenizer import tokenizer_json_from_gguf_vocab

    kind = field_value(reader, "tokenizer.ggml.model")
    if kind is None:
        raise ValueError(f"{path}: GGUF has no tokenizer (tokenizer.ggml.model missing)")
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    bos_id = field_value(reader, "tokenizer.ggml.bos_token_id")
    eos_id = field_value(reader, "tokenizer.ggml.eos_token_id")
    add_bos = field_value(reader, "tokenizer.ggml.add_bos_token")
    if add_bos is None:
        add_bos = kind == "llama"  # llama.cpp's default for SentencePiece vocabularies
    try:
        text = tokenizer_json_from_gguf_vocab(
            model=kind,
            tokens=tokens,
            token_types=field_value(reader, "tokenizer.ggml.token_type"),
            scores=field_value(reader, "tokenizer.ggml.scores"),
            merges=field_value(reader, "tokenizer.ggml.merges"),
            pre=field_value(reader, "tokenizer.ggml.pre"),
            bos_id=bos_id,
            unk_id=field_value(reader, "tokenizer.ggml.unknown_token_id"),
            add_bos=bool(add_bos),
            add_space_prefix=field_value(reader, "tokenizer.ggml.add_space_prefix"),
        )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    template = field_value(reader, "tokenizer.chat_template")
    if template is None:
        template = DEFAULT_TEMPLATES.get(str(field_value(reader, "general.architecture")))
    data = TokenizerData(
        tokenizer_json=text,
        chat_template=template,
        bos_token=None if bos_id is None else tokens[int(bos_id)],
        eos_token=None if eos_id is None else tokens[int(eos_id)],
        add_bos=bool(add_bos),
    )
    return data, end_of_turn_ids(tokens)


def open_reader(path: Path) -> Any:
    """GGUFReader on ``path`` with one-line errors for missing, foreign and truncated files."""
    gguf = _require_gguf()
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such GGUF file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # the reader raises assorted types on bad bytes
        raise RuntimeError(f"{path}: truncated or corrupt GGUF file ({type(e).__name__}: {e})") from e
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise RuntimeError(f"{path}: truncated GGUF file (tensor {t.name} extends past the end)")
    return reader


@register_importer("gguf")
class GGUFImporter(Importer):
    @classmethod
    def can_load(cls, path: Path) -> bool:
        # edgelut's own model files are GGUF containers too; the "elut" importer reads those.
        if not path.is_file() or is_edgelut_model_file(path):
            return False
        if path.suffix.lower() == ".gguf":
            return True
        try:
            with open(path, "rb") as fh:
                return fh.read(4) == GGUF_MAGIC
        except OSError:
            return False

    def load(self, path: Path) -> ImportedModel:
        return load_gguf(path)


def _phi3_rope(
    reader: Any, arch: str, config: ModelConfig, tensors: dict[str, np.ndarray], path: Path
) -> None:
    """Partial RoPE and LongRoPE as llama.cpp stores them (Phi-3): within the original context."""
    rope_dim = field_value(reader, f"{arch}.rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != config.head_dim:
        config.rope_dim = int(rope_dim)
    short = tensors.pop("rope_factors_short.weight", None)
    tensors.pop("rope_factors_long.weight", None)  # for contexts past the original: not supported yet
    if short is None:
        return
    if config.rope_scaling is not None:
        raise ValueError(f"{path}: both rope_factors_short.weight and {arch}.rope.scaling.type are set")
    original = field_value(reader, f"{arch}.rope.scaling.original_context_length", config.context_length)
    config.rope_scaling = {"type": "freq_factors", "factors": [float(f) for f in short.reshape(-1)]}
    config.rope_mscale = f32(field_value(reader, f"{arch}.rope.scaling.attn_factor", 1.0))
    config.context_length = min(config.context_length, int(original))


def _layer_index(name: str) -> int | None:
    return int(name.split(".")[1]) if name.startswith("blk.") else None


def load_gguf(path: str | Path, *, layers: int | None = None) -> ImportedModel:
    """A GGUF file as float weights (HF orientation), config, tokenizer and Q4_0/Q4_1 codes.

    ``layers`` keeps only the first few blocks (config.n_layers says so): a
    smaller but still real model for tests and quick experiments.
    """
    gguf = _require_gguf()
    path = Path(path)
    reader = open_reader(path)
    arch = field_value(reader, "general.architecture")
    names = {t.name for t in reader.tensors}
    if "token_embd.weight" not in names:
        raise ValueError(f"{path}: GGUF has no token_embd.weight tensor")
    n_vocab = next(int(t.shape[-1]) for t in reader.tensors if t.name == "token_embd.weight")
    config = config_from_metadata(
        reader, path, n_vocab, tied="output.weight" not in names, bias="blk.0.attn_q.bias" in names
    )
    if layers is not None:
        if not 1 <= layers <= config.n_layers:
            raise ValueError(f"layers must be 1..{config.n_layers}, got {layers}")
        config.n_layers = layers
    # llama.cpp permutes q/k rows only for the llama architecture.
    permuted = ARCHITECTURES[arch].gguf_permuted_qk
    heads = {"attn_q": config.n_heads, "attn_k": config.n_kv_heads} if permuted else {}

    tensors: dict[str, np.ndarray] = {}
    codes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for t in reader.tensors:
        layer = _layer_index(t.name)
        if layer is not None and layer >= config.n_layers:
            continue
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))  # GGUF lists ne0 (K) first
        qname = t.tensor_type.name
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise ValueError(f"{path}: tensor {t.name} has unsupported type {qname}") from e
        w = np.asarray(w, dtype=np.float32).reshape(shape)
        kind = t.name.split(".")[-2] if t.name.startswith("blk.") else ""
        n_head = heads.get(kind)
        if n_head is not None:
            w = unpermute_rows(w, n_head)
        tensors[t.name] = np.ascontiguousarray(w)
        if qname in ("Q4_0", "Q4_1") and len(shape) == 2:
            c, s, m = q4_codes(t.data, qname, shape[0], shape[1])
            if n_head is not None:
                c, s, m = (unpermute_rows(a, n_head) for a in (c, s, m))
            codes[t.name] = (np.ascontiguousarray(c), np.ascontiguousarray(s), np.ascontiguousarray(m))
    if ARCHITECTURES[arch].fused_qkv:
        from edgelut.models.importers.huggingface import split_fused

        split_fused(tensors, config)
        split_fused(codes, config)  # type: ignore[arg-type]
    _phi3_rope(reader, arch, config, tensors, path)
    tokenizer, turn_ends = _tokenizer_and_turn_ends(reader, path)
    config.eos_token_ids = tuple(dict.fromkeys([*config.eos_token_ids, *turn_ends]))
    freqs = tensors.pop("rope_freqs.weight", None)
    if freqs is not None:
        # Llama 3.1-style scaling: llama.cpp stores the per-frequency divisors as a tensor.
        if config.rope_scaling is not None:
            raise ValueError(f"{path}: both rope_freqs.weight and {arch}.rope.scaling.type are set")
        config.rope_scaling = {"type": "freq_factors", "factors": [float(f) for f in freqs.reshape(-1)]}
    return ImportedModel(
        config=config,
        tensors=tensors,
        tokenizer=tokenizer,
        source=str(path),
        source_codes=codes,
    )
