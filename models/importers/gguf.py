"""GGUF importer (llama.cpp's format).

The file is read by edgelut's bounded GGUF reader (models/gguf_file.py, the C++
parser) and dequantised by ``gguf.quants``; this file only maps
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

import os
from dataclasses import dataclass
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
from edgelut.models.gguf_file import GGUFFile, Metadata, ModelFileError
from edgelut.models.importers import Importer, ModelNotFoundError, register_importer
from edgelut.models.lazy import LazyTensors, RowSource

GGUF_MAGIC = b"GGUF"
Q4_GROUP = 32


def _require_gguf() -> Any:
    try:
        import gguf
    except ImportError as e:  # a hard dependency, but say what to do
        raise RuntimeError("reading GGUF files needs the `gguf` package (pip install gguf)") from e
    return gguf


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
    if not path.is_file():  # never open a FIFO or device: it could block or never end
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    return head[:4] == GGUF_MAGIC and b"edgelut.format_version" in head


def f32(value: Any) -> float:
    """A GGUF float32 as the shortest decimal that rounds to it (9.9999997e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def _rope_scaling(meta: Metadata, arch: str) -> dict | None:
    kind = meta.str(f"{arch}.rope.scaling.type", None)
    factor = meta.float(f"{arch}.rope.scaling.factor", None, lo=0.0, hi=1024.0)
    if kind in (None, "none") or not factor or float(factor) == 1.0:
        return None
    if kind != "linear":
        raise meta.fail(f"rope scaling type {kind!r} is not supported (only linear)")
    return {"type": "linear", "factor": f32(factor)}


# llama.cpp's Gemma 3 GGUFs carry the window but neither the layer pattern nor the RoPE base
# of the sliding layers: its loader fixes them, as Gemma 3's config.json does (every 6th
# layer global, local base 10000). Newer converters may write them; those keys win.
_SWA_DEFAULTS = {"gemma3": (6, 10000.0)}

# Upper bounds for hyper-parameters read from a source GGUF (the model file
# reader's, csrc/io/model_file.cc).
MAX_VOCAB, MAX_WIDTH, MAX_LAYERS, MAX_HEADS, MAX_CONTEXT = 1 << 24, 1 << 20, 1 << 12, 1 << 12, 1 << 24


def _sliding(meta: Metadata, arch: str) -> dict[str, Any]:
    window = meta.int(f"{arch}.attention.sliding_window", None, lo=0, hi=MAX_CONTEXT)
    if not window:
        return {}
    pattern, local_theta = _SWA_DEFAULTS.get(arch, (0, 0.0))
    key = f"{arch}.attention.sliding_window_pattern"
    if key in meta and isinstance(meta.values[key], list):
        # per-layer booleans (true = sliding): recover the period
        flags = [bool(v) for v in meta.values[key]]
        period = next((i + 1 for i, sliding in enumerate(flags) if not sliding), 0)
        if flags != [period == 0 or (i + 1) % period != 0 for i in range(len(flags))]:
            raise meta.fail(f"sliding-window layer pattern {flags} is not periodic")
        pattern = period
    elif key in meta:
        pattern = meta.int(key, lo=0, hi=MAX_LAYERS)
    local_theta = meta.float(f"{arch}.rope.freq_base_swa", local_theta, lo=0.0, hi=1e12)
    return {
        "sliding_window": int(window),
        "sliding_window_pattern": int(pattern),
        "rope_local_theta": f32(local_theta),
    }


# Gemma 3's config.json sets query_pre_attn_scalar, the softmax scale's 1/sqrt(.), which its
# GGUFs do not carry. It is the head size (256) for every size but 27B, the only one with 62
# layers, whose value is hidden / heads (5376 / 32 = 168 against a head size of 128); the
# same rule as llama.cpp's loader.
_GEMMA3_27B_LAYERS = 62


def _query_scale(arch: str | None, n_layers: int, hidden: int, n_heads: int) -> dict[str, Any]:
    if arch == "gemma3" and n_layers == _GEMMA3_27B_LAYERS:
        return {"attn_scale": f32((hidden / n_heads) ** -0.5)}
    return {}


# GGUF architecture names that are an edgelut architecture with switches of their own: llama.cpp's
# "bitnet" graph (the 1bitLLM models) gates with SiLU, bitnet.cpp's "bitnet-b1.58" (2B-4T) with ReLU^2.
GGUF_ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "bitnet": ("bitnet", {"ffn_act": "silu"}),
    "bitnet-b1.58": ("bitnet", {"ffn_act": "relu2"}),
}


def edgelut_architecture(gguf_arch: str | None) -> tuple[str | None, dict[str, Any]]:
    """A GGUF general.architecture -> (edgelut architecture, config switches it implies)."""
    if gguf_arch in GGUF_ARCHITECTURES:
        return GGUF_ARCHITECTURES[gguf_arch]
    return gguf_arch, {}


def config_from_metadata(
    meta: Metadata, path: Path, n_vocab_tensor: int, tied: bool, bias: bool
) -> ModelConfig:
    gguf_arch = meta.str("general.architecture", None)
    arch, switches = edgelut_architecture(gguf_arch)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelFileError(
            f"{path}: architecture {arch!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    a = f"{gguf_arch}."
    hidden = meta.int(a + "embedding_length", lo=1, hi=MAX_WIDTH)
    n_heads = meta.int(a + "attention.head_count", lo=1, hi=MAX_HEADS)
    head_dim = meta.int(a + "attention.key_length", hidden // n_heads, lo=2, hi=MAX_WIDTH)
    vocab = meta.int(a + "vocab_size", n_vocab_tensor, lo=1, hi=MAX_VOCAB)
    n_layers = meta.int(a + "block_count", lo=1, hi=MAX_LAYERS)
    eos = meta.token_id("tokenizer.ggml.eos_token_id", vocab)
    eot = meta.token_id("tokenizer.ggml.eot_token_id", vocab)
    eos_ids = tuple(dict.fromkeys(int(t) for t in (eos, eot) if t is not None))
    try:
        return ModelConfig(
            architecture=arch,
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=meta.int(a + "feed_forward_length", lo=1, hi=MAX_WIDTH),
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=meta.int(a + "attention.head_count_kv", n_heads, lo=1, hi=n_heads),
            head_dim=head_dim,
            rms_norm_eps=f32(meta.float(a + "attention.layer_norm_rms_epsilon", lo=1e-30, hi=0.5)),
            rope_theta=f32(meta.float(a + "rope.freq_base", 10000.0, lo=1.0, hi=1e12)),
            rope_style="neox",  # after un-permuting, every supported GGUF is in HF (NeoX) order
            rope_scaling=_rope_scaling(meta, gguf_arch),
            context_length=meta.int(a + "context_length", 2048, lo=1, hi=MAX_CONTEXT),
            tie_embeddings=tied,
            attn_bias=bias,
            bos_token_id=meta.token_id("tokenizer.ggml.bos_token_id", vocab),
            eos_token_ids=eos_ids,
            name=meta.str("general.name", path.stem),
            **_sliding(meta, arch),
            **_query_scale(arch, n_layers, hidden, n_heads),
            **switches,
        )
    except ValueError as e:
        if isinstance(e, ModelFileError):
            raise
        raise ModelFileError(f"{path}: bad config: {e}") from None


def tokenizer_from_metadata(f: GGUFFile) -> TokenizerData:
    return _tokenizer_and_turn_ends(f)[0]


def _tokenizer_and_turn_ends(f: GGUFFile) -> tuple[TokenizerData, list[int]]:
    """The tokenizer, and the ids of its end-of-turn tokens (stop tokens for chat)."""
    from edgelut.models.chat_templates import DEFAULT_TEMPLATES, end_of_turn_ids
    from edgelut.tokenizer import tokenizer_json_from_gguf_vocab

    meta, path = f.meta, f.path
    kind = meta.str("tokenizer.ggml.model", None)
    if kind is None:
        raise ModelFileError(f"{path}: GGUF has no tokenizer (tokenizer.ggml.model missing)")
    tokens = meta.list("tokenizer.ggml.tokens", str)
    n = len(tokens)
    if n == 0:
        raise ModelFileError(f"{path}: field 'tokenizer.ggml.tokens' is empty")
    types = meta.list("tokenizer.ggml.token_type", int, None)
    scores = meta.list("tokenizer.ggml.scores", float, None)
    for key, arr in (("tokenizer.ggml.token_type", types), ("tokenizer.ggml.scores", scores)):
        if arr is not None and len(arr) != n:
            raise ModelFileError(f"{path}: field '{key}' has {len(arr)} entries for {n} tokens")
    bos_id = meta.token_id("tokenizer.ggml.bos_token_id", n)
    eos_id = meta.token_id("tokenizer.ggml.eos_token_id", n)
    add_bos = meta.bool("tokenizer.ggml.add_bos_token", None)
    if add_bos is None:
        add_bos = kind == "llama"  # llama.cpp's default for SentencePiece vocabularies
    try:
        text = tokenizer_json_from_gguf_vocab(
            model=kind,
            tokens=tokens,
            token_types=types,
            scores=scores,
            merges=meta.list("tokenizer.ggml.merges", str, None),
            pre=meta.str("tokenizer.ggml.pre", None),
            bos_id=bos_id,
            unk_id=meta.token_id("tokenizer.ggml.unknown_token_id", n),
            add_bos=bool(add_bos),
            add_space_prefix=meta.bool("tokenizer.ggml.add_space_prefix", None),
        )
    except (ValueError, KeyError, IndexError, TypeError) as e:
        # The vocabulary is the file's content: any way it fails to make a tokenizer is a bad file.
        raise ModelFileError(
            f"{path}: the tokenizer metadata is unusable ({type(e).__name__}: {e})"
        ) from None
    template = meta.str("tokenizer.chat_template", None)
    if template is None:
        template = DEFAULT_TEMPLATES.get(str(meta.str("general.architecture", "")))
    data = TokenizerData(
        tokenizer_json=text,
        chat_template=template,
        bos_token=None if bos_id is None else tokens[bos_id],
        eos_token=None if eos_id is None else tokens[eos_id],
        add_bos=bool(add_bos),
    )
    return data, end_of_turn_ids(tokens)


def open_reader(path: Path) -> GGUFFile:
    """A source GGUF through the bounded reader; one-line errors for missing, foreign and corrupt files."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such GGUF file")
    return GGUFFile(path)


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
    meta: Metadata, arch: str, config: ModelConfig, tensors: dict[str, np.ndarray], path: Path
) -> None:
    """Partial RoPE and LongRoPE as llama.cpp stores them (Phi-3): the short factors within the
    original context, the long ones past it."""
    rope_dim = meta.int(f"{arch}.rope.dimension_count", None, lo=2, hi=MAX_WIDTH)
    if rope_dim is not None and int(rope_dim) != config.head_dim:
        config.rope_dim = int(rope_dim)
    short = tensors.pop("rope_factors_short.weight", None)
    long = tensors.pop("rope_factors_long.weight", None)
    if short is None:
        return
    if config.rope_scaling is not None:
        raise ModelFileError(f"{path}: both rope_factors_short.weight and {arch}.rope.scaling.type are set")
    original = meta.int(
        f"{arch}.rope.scaling.original_context_length", config.context_length, lo=1, hi=MAX_CONTEXT
    )
    factors = [float(f) for f in short.reshape(-1)]
    config.rope_mscale = f32(meta.float(f"{arch}.rope.scaling.attn_factor", 1.0, lo=0.0, hi=100.0))
    if long is None or config.context_length <= int(original):
        config.rope_scaling = {"type": "freq_factors", "factors": factors}
        config.context_length = min(config.context_length, int(original))
        return
    if long.size != short.size:
        raise ModelFileError(
            f"{path}: rope_factors_long.weight has {long.size} values, rope_factors_short.weight {short.size}"
        )
    config.rope_scaling = {
        "type": "longrope",
        "factors": factors,
        "long_factors": [float(f) for f in long.reshape(-1)],
        "original_context": int(original),
    }


# ggml types the gguf package cannot dequantise; load_gguf asks gguf for the rest there, since
# importing gguf costs ~70 ms and this module is imported on every start to sniff model files.
_NOT_DEQUANTIZABLE = {"I8", "I16", "I32", "I64"}


@dataclass(frozen=True)
class _RawRows:
    """Where one tensor's bytes are in the file: rows of ``nbytes / rows`` bytes each."""

    path: Path
    offset: int
    nbytes: int
    shape: tuple[int, ...]

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) == 2 else 1

    def read(self, a: int, b: int) -> np.ndarray:
        """Rows [a, b) as uint8 of shape (b - a, row bytes)."""
        row = self.nbytes // self.rows
        with open(self.path, "rb") as f:
            buf = os.pread(f.fileno(), (b - a) * row, self.offset + a * row)
        if len(buf) != (b - a) * row:
            raise RuntimeError(f"{self.path}: truncated GGUF file (a tensor extends past the end)")
        return np.frombuffer(buf, dtype=np.uint8).reshape(b - a, row)


def _whole_heads(a: int, b: int, rows: int, n_head: int) -> tuple[int, int, int]:
    """Rows [a, b) widened to whole heads: (start, end, heads in it). The q/k permutation mixes
    rows within a head only, so a block of whole heads un-permutes on its own."""
    per = rows // n_head
    a0, b0 = a // per * per, -(-b // per) * per
    return a0, b0, (b0 - a0) // per


def _float_rows(raw: _RawRows, qtype: Any, n_head: int | None):
    """read_rows(a, b) -> float32 rows in HF orientation (llama's q/k rows un-permuted)."""
    gguf = _require_gguf()

    def dequantize(data: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(gguf.quants.dequantize(data, qtype), dtype=np.float32)
        except NotImplementedError as e:
            raise ValueError(f"{raw.path}: a tensor has unsupported type {qtype.name}") from e

    def read(a: int, b: int) -> np.ndarray:
        if len(raw.shape) != 2:
            w = dequantize(raw.read(0, 1).reshape(-1))
            w = w.reshape(raw.shape)
            return np.ascontiguousarray((unpermute_rows(w, n_head) if n_head is not None else w)[a:b])
        if n_head is None:
            return np.ascontiguousarray(dequantize(raw.read(a, b)).reshape(b - a, raw.shape[1]))
        a0, b0, heads = _whole_heads(a, b, raw.rows, n_head)
        w = dequantize(raw.read(a0, b0)).reshape(b0 - a0, raw.shape[1])
        return np.ascontiguousarray(unpermute_rows(w, heads)[a - a0 : b - a0])

    return read


def _code_rows(raw: _RawRows, qname: str, n_head: int | None):
    """read_rows(a, b) -> the Q4_0/Q4_1 (codes, scales, mins) of rows [a, b)."""

    def read(a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if n_head is None:
            c, s, m = q4_codes(raw.read(a, b), qname, b - a, raw.shape[1])
            return np.ascontiguousarray(c), np.ascontiguousarray(s), np.ascontiguousarray(m)
        a0, b0, heads = _whole_heads(a, b, raw.rows, n_head)
        c, s, m = q4_codes(raw.read(a0, b0), qname, b0 - a0, raw.shape[1])
        return tuple(np.ascontiguousarray(unpermute_rows(x, heads)[a - a0 : b - a0]) for x in (c, s, m))

    return read


# llama.cpp's ternary types: blocks of 256 weights, one fp16 scale d each, w = d * t with t in
# {-1, 0, 1}; the fp16 d is the block's last two bytes in both. edgelut's "tq" (symmetric) is
# w = scale * t per group, so a block is two groups of 128 with d repeated: the same numbers.
TERNARY_TYPES = ("TQ1_0", "TQ2_0")
TERNARY_GROUP = 128


def ternary_codes(blocks: np.ndarray, qtype: Any, n: int, k: int) -> tuple[np.ndarray, np.ndarray, None]:
    """TQ1_0/TQ2_0 rows -> (codes int8 (N, K) in {-1, 0, 1}, scales (N, K/128), None), the file's own codes.

    The codes are the blocks dequantised with every d set to 1 (gguf's decoder
    of the base-3 or 2-bit packing, so nothing here re-implements it).
    """
    gguf = _require_gguf()
    raw = np.array(blocks, dtype=np.uint8).reshape(n * (k // 256), -1)
    d = raw[:, -2:].copy().view(np.float16).astype(np.float32)[:, 0]
    raw[:, -2:] = np.frombuffer(np.float16(1.0).tobytes(), dtype=np.uint8)
    codes = np.asarray(gguf.quants.dequantize(raw.reshape(-1), qtype), dtype=np.float32).reshape(n, k)
    scales = np.repeat(d.reshape(n, k // 256), 256 // TERNARY_GROUP, axis=1)
    return codes.astype(np.int8), scales, None


def _ternary_rows(raw: _RawRows, qtype: Any, n_head: int | None):
    """read_rows(a, b) -> the TQ1_0/TQ2_0 (codes, scales, None) of rows [a, b)."""

    def read(a: int, b: int) -> tuple[np.ndarray, np.ndarray, None]:
        if n_head is None:
            return ternary_codes(raw.read(a, b), qtype, b - a, raw.shape[1])
        a0, b0, heads = _whole_heads(a, b, raw.rows, n_head)
        c, s, _ = ternary_codes(raw.read(a0, b0), qtype, b0 - a0, raw.shape[1])
        c, s = (np.ascontiguousarray(unpermute_rows(x, heads)[a - a0 : b - a0]) for x in (c, s))
        return c, s, None

    return read


def _layer_index(name: str) -> int | None:
    return int(name.split(".")[1]) if name.startswith("blk.") else None


def load_gguf(path: str | Path, *, layers: int | None = None) -> ImportedModel:
    """A GGUF file as float weights (HF orientation), config, tokenizer and Q4_0/Q4_1 codes.

    ``layers`` keeps only the first few blocks (config.n_layers says so): a
    smaller but still real model for tests and quick experiments.
    """
    path = Path(path)
    f = open_reader(path)
    arch, _ = edgelut_architecture(f.meta.str("general.architecture", None))
    embd = f.tensor("token_embd.weight")
    if embd is None:
        raise ModelFileError(f"{path}: GGUF has no token_embd.weight tensor")
    names = {t.name for t in f.tensors}
    config = config_from_metadata(
        f.meta, path, int(embd.shape[0]), tied="output.weight" not in names, bias="blk.0.attn_q.bias" in names
    )
    if layers is not None:
        if not 1 <= layers <= config.n_layers:
            raise ValueError(f"layers must be 1..{config.n_layers}, got {layers}")
        config.n_layers = layers
    # llama.cpp permutes q/k rows only for the llama architecture.
    permuted = ARCHITECTURES[arch].gguf_permuted_qk
    heads = {"attn_q": config.n_heads, "attn_k": config.n_kv_heads} if permuted else {}

    # Tensors are read with pread when the quantiser asks for them (one tensor, or a block of
    # rows of one, at a time), not through the reader's map: touched map pages would count in
    # this process's RSS until the end.
    gguf = _require_gguf()
    dequantizable = {q.name for q in gguf.GGMLQuantizationType} - _NOT_DEQUANTIZABLE
    tensors = LazyTensors()
    codes = LazyTensors()
    specs: dict[str, tuple[str, int, bool]] = {}
    ternary: dict[str, int] = {}
    for t in f.tensors:
        layer = _layer_index(t.name)
        if layer is not None and layer >= config.n_layers:
            continue
        shape = tuple(int(s) for s in t.shape)
        qname = t.type_name
        if qname not in dequantizable:
            raise ModelFileError(f"{path}: tensor {t.name} has unsupported type {qname}")
        if t.name.endswith(".scale"):  # older BitNet GGUFs: a per-tensor scale beside each weight
            raise ModelFileError(f"{path}: tensor {t.name}: per-tensor scale tensors are not supported")
        kind = t.name.split(".")[-2] if t.name.startswith("blk.") else ""
        n_head = heads.get(kind)
        if n_head is not None and shape[0] % (2 * n_head):
            raise ModelFileError(
                f"{path}: tensor {t.name} has {shape[0]} rows, not a multiple of 2 x {n_head} heads"
            )
        raw = _RawRows(path, int(t.offset), int(t.nbytes), shape)
        tensors.add(t.name, RowSource(shape, _float_rows(raw, gguf.GGMLQuantizationType(t.type), n_head)))
        if qname in ("Q4_0", "Q4_1") and len(shape) == 2:
            codes.add(t.name, RowSource(shape, _code_rows(raw, qname, n_head)))
        elif qname in TERNARY_TYPES and len(shape) == 2:
            codes.add(t.name, RowSource(shape, _ternary_rows(raw, gguf.GGMLQuantizationType(t.type), n_head)))
            specs[t.name] = ("tq", TERNARY_GROUP, False)
            ternary[qname] = ternary.get(qname, 0) + 1
    n_matrices = sum(1 for name in tensors if len(tensors.source(name).shape) == 2)
    if ARCHITECTURES[arch].fused_qkv:
        from edgelut.models.importers.huggingface import split_fused, split_specs

        split_fused(tensors, config)
        split_fused(codes, config)  # type: ignore[arg-type]
        split_specs(specs)
    _phi3_rope(f.meta, arch, config, tensors, path)
    tokenizer, turn_ends = _tokenizer_and_turn_ends(f)
    config.eos_token_ids = tuple(dict.fromkeys([*config.eos_token_ids, *turn_ends]))
    freqs = tensors.pop("rope_freqs.weight", None)
    if freqs is not None:
        # Llama 3.1-style scaling: llama.cpp stores the per-frequency divisors as a tensor.
        if config.rope_scaling is not None:
            raise ModelFileError(f"{path}: both rope_freqs.weight and {arch}.rope.scaling.type are set")
        config.rope_scaling = {"type": "freq_factors", "factors": [float(x) for x in freqs.reshape(-1)]}
    return ImportedModel(
        config=config,
        tensors=tensors,
        tokenizer=tokenizer,
        source=str(path),
        source_codes=codes,
        source_specs=specs,
        import_info=_ternary_info(ternary, specs, n_matrices),
    )


def _ternary_info(ternary: dict[str, int], specs: dict[str, Any], n_matrices: int) -> dict[str, Any]:
    """The import record of a GGUF with ternary tensors (what `edgelut info` shows), else empty."""
    if not ternary:
        return {}
    return {
        "format": "gguf-ternary",
        "bits": 1.58,
        "group_size": 256,
        "types": dict(sorted(ternary.items())),
        "layers": n_matrices,
        "exact_layers": len(specs),
        "edgelut_groups": [TERNARY_GROUP],
    }
