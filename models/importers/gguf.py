"""GGUF importer (llama.cpp's format), built on the ``gguf`` package's reader.

The reader and dequantisation come from ``gguf``; this file only maps
metadata to :class:`ModelConfig`, reshapes tensors to (N, K) float32 and undoes
llama.cpp's Q/K row permutation. llama.cpp's converter permutes the rows of
HF ``q_proj``/``k_proj`` of ``llama`` models so that RoPE can rotate adjacent
pairs; we invert it so every importer returns HF orientation (NeoX RoPE).
Qwen2 GGUFs are not permuted (llama.cpp runs NeoX RoPE for them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgelut.models.config import SUPPORTED_ARCHITECTURES, ImportedModel, ModelConfig, TokenizerData
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
    )


def tokenizer_from_metadata(reader: Any, path: Path) -> TokenizerData:
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
    return TokenizerData(
        tokenizer_json=text,
        chat_template=field_value(reader, "tokenizer.chat_template"),
        bos_token=None if bos_id is None else tokens[int(bos_id)],
        eos_token=None if eos_id is None else tokens[int(eos_id)],
        add_bos=bool(add_bos),
    )


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


_DEQUANTIZABLE = {q.name for q in _require_gguf().GGMLQuantizationType} - {"I8", "I16", "I32", "I64"}


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
        if n_head is not None and (a, b) != (0, raw.rows):
            return read(0, raw.rows)[a:b]  # the permutation mixes rows within a head
        w = dequantize(raw.read(a, b)).reshape(b - a, raw.shape[1])
        return np.ascontiguousarray(unpermute_rows(w, n_head) if n_head is not None else w)

    return read


def _code_rows(raw: _RawRows, qname: str, n_head: int | None):
    """read_rows(a, b) -> the Q4_0/Q4_1 (codes, scales, mins) of rows [a, b)."""

    def read(a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if n_head is not None and (a, b) != (0, raw.rows):
            return tuple(x[a:b] for x in read(0, raw.rows))
        c, s, m = q4_codes(raw.read(a, b), qname, b - a, raw.shape[1])
        if n_head is not None:
            c, s, m = (unpermute_rows(x, n_head) for x in (c, s, m))
        return np.ascontiguousarray(c), np.ascontiguousarray(s), np.ascontiguousarray(m)

    return read


def _layer_index(name: str) -> int | None:
    return int(name.split(".")[1]) if name.startswith("blk.") else None


def load_gguf(path: str | Path, *, layers: int | None = None) -> ImportedModel:
    """A GGUF file as float weights (HF orientation), config, tokenizer and Q4_0/Q4_1 codes.

    ``layers`` keeps only the first few blocks (config.n_layers says so): a
    smaller but still real model for tests and quick experiments.
    """
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
    heads = {"attn_q": config.n_heads, "attn_k": config.n_kv_heads} if arch == "llama" else {}

    # Tensors are read with pread when the quantiser asks for them (one tensor, or a block of
    # rows of one, at a time), not through the reader's map: touched map pages would count in
    # this process's RSS until the end.
    tensors = LazyTensors()
    codes = LazyTensors()
    for t in reader.tensors:
        layer = _layer_index(t.name)
        if layer is not None and layer >= config.n_layers:
            continue
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))  # GGUF lists ne0 (K) first
        qname = t.tensor_type.name
        if qname not in _DEQUANTIZABLE:
            raise ValueError(f"{path}: tensor {t.name} has unsupported type {qname}")
        kind = t.name.split(".")[-2] if t.name.startswith("blk.") else ""
        raw = _RawRows(path, int(t.data_offset), int(t.n_bytes), shape)
        tensors.add(t.name, RowSource(shape, _float_rows(raw, t.tensor_type, heads.get(kind))))
        if qname in ("Q4_0", "Q4_1") and len(shape) == 2:
            codes.add(t.name, RowSource(shape, _code_rows(raw, qname, heads.get(kind))))
    freqs = tensors.pop("rope_freqs.weight", None)
    if freqs is not None:
        # Llama 3.1-style scaling: llama.cpp stores the per-frequency divisors as a tensor.
        if config.rope_scaling is not None:
            raise ValueError(f"{path}: both rope_freqs.weight and {arch}.rope.scaling.type are set")
        config.rope_scaling = {"type": "freq_factors", "factors": [float(f) for f in freqs.reshape(-1)]}
    return ImportedModel(
        config=config,
        tensors=tensors,
        tokenizer=tokenizer_from_metadata(reader, path),
        source=str(path),
        source_codes=codes,
    )
