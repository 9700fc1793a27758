"""The edgelut model file: writer and memory-mapped reader (spec: docs/FORMAT.md, "Model file").

A model file is a GGUF container written with ``gguf.GGUFWriter`` (so the
standard gguf tools can list it) with 4096-byte tensor alignment. Linear
weights are raw 1-D I8 tensors holding exactly the bytes of a
:class:`~edgelut.kernels.PackedMatrix`; their logical shape and type live in
``edgelut.tensor.<name>.*`` keys. Every tensor carries a CRC32. Tensors are
ordered by layer so that one layer is one contiguous byte range, which is also
recorded (``edgelut.layer.offsets`` / ``edgelut.layer.sizes``) for the pager.
The reader is the bounded C++ one (``_core.ModelFileReader``), never gguf's.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgelut import _core
from edgelut.kernels import PackedMatrix, from_buffer
from edgelut.models.config import ModelConfig, TokenizerData, expected_tensors
from edgelut.models.gguf_file import Metadata, ModelFileError, check_regular_file
from edgelut.models.spill import SpilledTensor, packed_meta

__all__ = [
    "ALIGNMENT",
    "FORMAT_VERSION",
    "ModelFile",
    "ModelFileError",
    "ShardSpec",
    "TensorEntry",
    "compact_merges",
    "expected_tensors",
    "read_model_file",
    "tensor_set_problem",
    "write_model_file",
]

FORMAT_VERSION = 1
ALIGNMENT = 4096
KEY_VERSION = "edgelut.format_version"
FLOAT_TYPES = ("f32", "f16")


@dataclass
class ShardSpec:
    """Which slice of every layer a file holds (the whole model by default).

    ``ffn_columns`` is a list of [start, end) ranges of FFN intermediate
    columns; ``heads``/``kv_heads`` list the attention heads held.
    """

    rank: int = 0
    world_size: int = 1
    heads: list[int] = field(default_factory=list)
    kv_heads: list[int] = field(default_factory=list)
    ffn_columns: list[tuple[int, int]] = field(default_factory=list)
    lm_head: bool = True  # False: a worker's shard, which computes no logits
    model_hash: str = ""  # sha256 of the whole model file the shard was cut from
    embd_columns: tuple[int, int] | None = None  # token-embedding columns it adds (None: all)
    layers: tuple[int, int] | None = None  # layer split: the [begin, end) layers it holds (None: all)

    @classmethod
    def full(cls, config: ModelConfig) -> ShardSpec:
        return cls(
            0,
            1,
            list(range(config.n_heads)),
            list(range(config.n_kv_heads)),
            [(0, config.intermediate_size)],
        )


@dataclass
class TensorEntry:
    """Where one tensor lives in the file and what it is."""

    name: str
    qtype: str  # q1..q4, tq (packed) or f32, f16
    shape: tuple[int, ...]  # logical shape: (n, k) for packed tensors
    offset: int  # absolute file offset of the first byte
    nbytes: int
    crc32: int
    group_size: int = 0
    asym: bool = False
    super_block: int = 0  # two-level scales: weights per super-block (0 = fp16 per group)

    @property
    def packed(self) -> bool:
        return self.qtype not in FLOAT_TYPES

    @property
    def n_weights(self) -> int:
        return int(np.prod(self.shape))


def _shape_of(t: PackedMatrix | SpilledTensor | np.ndarray) -> tuple[int, ...]:
    if isinstance(t, PackedMatrix):
        return (t.n, t.k)
    return t.shape if isinstance(t, SpilledTensor) else tuple(np.shape(t))


def tensor_set_problem(config: ModelConfig, shapes: dict[str, tuple[int, ...]], whole: bool) -> str | None:
    """What is wrong with a tensor set for ``config`` (missing, unexpected, misshapen), or None.

    ``whole`` is False for a shard, which holds a subset of slices."""
    want = expected_tensors(config)
    if whole:
        missing = [n for n in want if n not in shapes]
        if missing:
            return f"model is missing tensor(s) {', '.join(missing[:5])} required by its config"
    extra = [n for n in shapes if n not in want]
    if extra:
        return f"unexpected tensor(s) {', '.join(extra[:5])} for a {config.architecture} config"
    for name, got in shapes.items():
        if whole and got != want[name]:
            return f"tensor {name} has shape {got}, the config implies {want[name]}"
    return None


def _check_spec(config: ModelConfig, tensors: dict[str, Any], shard: ShardSpec) -> None:
    """Refuses, before a byte is written, a tensor set that does not match the config."""
    problem = tensor_set_problem(config, {n: _shape_of(t) for n, t in tensors.items()}, shard.world_size == 1)
    if problem:
        raise ValueError(problem)
    for name, t in tensors.items():
        if not isinstance(t, (PackedMatrix, SpilledTensor)):  # a spill checked its floats already
            a = np.asarray(t)
            if not np.issubdtype(a.dtype, np.floating):
                raise ValueError(f"tensor {name} must be float or packed, got dtype {a.dtype}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"tensor {name} contains NaN or infinity")
    if not 0 <= shard.rank < shard.world_size:
        raise ValueError(f"shard rank {shard.rank} is outside world size {shard.world_size}")


def _layer_of(name: str) -> int | None:
    if name.startswith("blk."):
        return int(name.split(".")[1])
    return None


def _pad(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def compact_merges(tokenizer_json: str) -> str:
    """The tokenizers JSON document with its BPE merges as "left right" strings, when no piece
    holds a space (otherwise, or without merges, the text unchanged).

    Both forms load to the same tokenizer, but tokenizers buffers a model's whole JSON subtree
    before building it, and a merge as a pair of strings is three allocations there against
    one: building Gemma 3's tokenizer (513k merges) peaked 379 MiB above its start with pairs
    and 181 MiB with strings (docs/BENCHMARKS.md, Gemma 3 section).
    """
    if not tokenizer_json:
        return tokenizer_json
    doc = json.loads(tokenizer_json)
    merges = doc.get("model", {}).get("merges")
    if not merges or not all(isinstance(m, list) and len(m) == 2 for m in merges):
        return tokenizer_json
    if any(" " in a or " " in b for a, b in merges):
        return tokenizer_json  # "a b c" would be ambiguous
    doc["model"]["merges"] = [f"{a} {b}" for a, b in merges]
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def write_model_file(
    path: str | os.PathLike[str],
    config: ModelConfig,
    tokenizer: TokenizerData,
    tensors: dict[str, PackedMatrix | SpilledTensor | np.ndarray],
    *,
    recipe: dict[str, Any] | None = None,
    shard: ShardSpec | None = None,
    float_type: str = "f32",
    progress: bool = False,
) -> Path:
    """Writes a model file; tensors are PackedMatrix (linear layers), float arrays, or either
    parked in a spill file (:class:`~edgelut.models.spill.SpilledTensor`, read back one at a time)."""
    import gguf  # deferred: only the writer needs it

    if float_type not in FLOAT_TYPES:
        raise ValueError(f"float_type must be 'f32' or 'f16', got {float_type!r}")
    shard = shard or ShardSpec.full(config)
    _check_spec(config, tensors, shard)
    order = [n for n in expected_tensors(config) if n in tensors]

    # Tensor payloads in file order, their CRCs and their offsets in the data section
    # (GGUFWriter pads each tensor to the alignment, in insertion order).
    payloads: list[tuple[str, Any, dict[str, Any]]] = []  # (name, array or spilled, meta)
    offset = 0
    layer_start: dict[int, int] = {}
    layer_end: dict[int, int] = {}
    for name in order:
        t = tensors[name]
        if isinstance(t, SpilledTensor):
            if not t.packed and t.meta["qtype"] != float_type:
                spilled = t.meta["qtype"]
                raise ValueError(f"tensor {name} was spilled as {spilled}, the file stores {float_type}")
            data: Any = t
            meta = dict(t.meta, crc32=t.crc32)
        elif isinstance(t, PackedMatrix):
            data = np.asarray(t.data).view(np.int8)
            meta = packed_meta(t)
        else:
            dtype = np.float32 if float_type == "f32" else np.float16
            data = np.ascontiguousarray(np.asarray(t, dtype=dtype))
            meta = {"qtype": float_type}
        if "crc32" not in meta:
            meta["crc32"] = zlib.crc32(data.view(np.uint8).reshape(-1)) & 0xFFFFFFFF
        payloads.append((name, data, meta))
        layer = _layer_of(name)
        if layer is not None:
            layer_start.setdefault(layer, offset)
            layer_end[layer] = offset + _pad(data.nbytes)
        offset += _pad(data.nbytes)

    arch = config.architecture
    u32, u64 = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.UINT64
    w = gguf.GGUFWriter(str(path), arch)
    w.add_custom_alignment(ALIGNMENT)
    if config.name:
        w.add_name(config.name)
    w.add_uint32(KEY_VERSION, FORMAT_VERSION)
    w.add_string("edgelut.recipe", json.dumps(recipe or {}, sort_keys=True))
    # Standard hyper-parameter keys (readable by gguf tools), plus edgelut extras.
    w.add_uint32(f"{arch}.vocab_size", config.vocab_size)
    w.add_uint32(f"{arch}.context_length", config.context_length)
    w.add_uint32(f"{arch}.embedding_length", config.hidden_size)
    w.add_uint32(f"{arch}.feed_forward_length", config.intermediate_size)
    w.add_uint32(f"{arch}.block_count", config.n_layers)
    w.add_uint32(f"{arch}.attention.head_count", config.n_heads)
    w.add_uint32(f"{arch}.attention.head_count_kv", config.n_kv_heads)
    w.add_uint32(f"{arch}.attention.key_length", config.head_dim)
    w.add_uint32(f"{arch}.attention.value_length", config.head_dim)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", config.rms_norm_eps)
    w.add_float32(f"{arch}.rope.freq_base", config.rope_theta)
    if config.rope_scaling:
        w.add_string(f"{arch}.rope.scaling.type", str(config.rope_scaling.get("type", "")))
        if "factor" in config.rope_scaling:
            w.add_float32(f"{arch}.rope.scaling.factor", float(config.rope_scaling["factor"]))
        w.add_string("edgelut.rope_scaling", json.dumps(config.rope_scaling, sort_keys=True))
        f32 = gguf.GGUFValueType.FLOAT32
        if "factors" in config.rope_scaling:  # for the C++ reader, which parses no JSON
            factors = [float(f) for f in config.rope_scaling["factors"]]
            w.add_key_value("edgelut.rope_freq_factors", factors, gguf.GGUFValueType.ARRAY, f32)
        if "long_factors" in config.rope_scaling:  # LongRoPE
            long = [float(f) for f in config.rope_scaling["long_factors"]]
            w.add_key_value("edgelut.rope_long_factors", long, gguf.GGUFValueType.ARRAY, f32)
            w.add_uint32("edgelut.rope_original_context", int(config.rope_scaling["original_context"]))
    w.add_string("edgelut.rope_style", config.rope_style)
    w.add_bool("edgelut.tie_embeddings", config.tie_embeddings)
    w.add_bool("edgelut.attn_bias", config.attn_bias)
    # Per-family switches (models/config.py ArchTraits), explicit so the engine needs no table.
    w.add_bool("edgelut.qk_norm", bool(config.qk_norm))
    w.add_bool("edgelut.post_norms", bool(config.post_norms))
    w.add_string("edgelut.ffn_act", str(config.ffn_act))
    w.add_bool("edgelut.sub_norms", bool(config.sub_norms))
    w.add_bool("edgelut.act_int8", bool(config.act_int8))
    w.add_float32("edgelut.embed_scale", float(config.embed_scale or 1.0))
    w.add_float32("edgelut.attn_scale", config.attn_scale)
    if config.rope_dim:
        w.add_uint32(f"{arch}.rope.dimension_count", config.rope_dim)
        w.add_uint32("edgelut.rope_dim", config.rope_dim)
    if config.rope_mscale != 1.0:
        w.add_float32("edgelut.rope_mscale", config.rope_mscale)
    if config.sliding_window > 0:
        w.add_uint32(f"{arch}.attention.sliding_window", config.sliding_window)
        w.add_uint32("edgelut.sliding_window_pattern", config.sliding_window_pattern)
        w.add_float32("edgelut.rope_local_theta", config.rope_local_theta)
    if config.ffn_hadamard:
        w.add_uint32("edgelut.ffn_hadamard", config.ffn_hadamard)
    if config.bos_token_id is not None:
        w.add_uint32("tokenizer.ggml.bos_token_id", config.bos_token_id)
    if config.eos_token_ids:
        w.add_uint32("tokenizer.ggml.eos_token_id", config.eos_token_ids[0])
        w.add_key_value("edgelut.eos_token_ids", list(config.eos_token_ids), gguf.GGUFValueType.ARRAY, u32)
    # Tokenizer.
    w.add_string("edgelut.tokenizer.json", compact_merges(tokenizer.tokenizer_json))
    if tokenizer.chat_template:
        w.add_string("tokenizer.chat_template", tokenizer.chat_template)
    if tokenizer.bos_token:
        w.add_string("edgelut.tokenizer.bos_token", tokenizer.bos_token)
    if tokenizer.eos_token:
        w.add_string("edgelut.tokenizer.eos_token", tokenizer.eos_token)
    w.add_bool("tokenizer.ggml.add_bos_token", tokenizer.add_bos)
    # Shard (the whole model unless written by `edgelut shard`).
    w.add_uint32("edgelut.shard.rank", shard.rank)
    w.add_uint32("edgelut.shard.world_size", shard.world_size)
    for key, vals, sub in (
        ("heads", shard.heads, u32),
        ("kv_heads", shard.kv_heads, u32),
        ("ffn_columns", [v for r in shard.ffn_columns for v in r], u64),
    ):
        if vals:  # GGUF has no empty arrays; a missing key reads back as []
            w.add_key_value(f"edgelut.shard.{key}", [int(v) for v in vals], gguf.GGUFValueType.ARRAY, sub)
    if shard.world_size > 1:
        w.add_bool("edgelut.shard.lm_head", shard.lm_head)
        w.add_string("edgelut.shard.model_hash", shard.model_hash)
        if shard.embd_columns is not None:
            cols = [int(v) for v in shard.embd_columns]
            w.add_key_value("edgelut.shard.embd_columns", cols, gguf.GGUFValueType.ARRAY, u64)
        if shard.layers is not None:
            span = [int(v) for v in shard.layers]
            w.add_key_value("edgelut.shard.layers", span, gguf.GGUFValueType.ARRAY, u64)
    # Layer byte ranges, relative to the start of the data section.
    layers = sorted(layer_start)
    if layers:
        offsets = [layer_start[i] for i in layers]
        w.add_key_value("edgelut.layer.offsets", offsets, gguf.GGUFValueType.ARRAY, u64)
        sizes = [layer_end[i] - layer_start[i] for i in layers]
        w.add_key_value("edgelut.layer.sizes", sizes, gguf.GGUFValueType.ARRAY, u64)
    # Per-tensor metadata, then the tensors.
    for name, data, meta in payloads:
        key = f"edgelut.tensor.{name}"
        w.add_string(f"{key}.qtype", meta["qtype"])
        w.add_uint32(f"{key}.crc32", meta["crc32"])
        if meta["qtype"] not in FLOAT_TYPES:
            w.add_uint64(f"{key}.n", meta["n"])
            w.add_uint64(f"{key}.k", meta["k"])
            w.add_uint32(f"{key}.group", meta["group"])
            w.add_bool(f"{key}.asym", meta["asym"])
            if meta.get("super"):  # only two-level tensors carry it, so other files stay byte-identical
                w.add_uint32(f"{key}.super", meta["super"])
        # numpy order (the writer reverses it into GGUF's ne order); packed bytes are 1-D.
        if isinstance(data, SpilledTensor):
            shape = (data.nbytes // data.dtype.itemsize,) if data.packed else data.shape
            w.add_tensor_info(name, shape, data.dtype, data.nbytes)
        else:
            w.add_tensor_info(name, data.shape, data.dtype, data.nbytes)
    path = Path(path)
    try:
        w.write_header_to_file(path)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        # One tensor in memory at a time: a spilled one is read back just before it is written.
        for _, data, _ in payloads:
            w.write_tensor_data(data.read() if isinstance(data, SpilledTensor) else data)
    finally:
        w.close()
    return path


class ModelFile:
    """A memory-mapped edgelut model file; open with :func:`read_model_file`.

    The container and the edgelut structure are checked by the C++ reader
    (``_core.ModelFileReader``: bounds, types, alignment, per-tensor metadata,
    hyper-parameters in range, CRC32s); this class reads the config, tokenizer,
    recipe and shard back through typed getters that name the file and the key.
    Raises :class:`~edgelut.models.gguf_file.ModelFileError` (a ValueError) for a
    bad file and ``FileNotFoundError`` / ``FileAccessError`` (OSErrors) for a
    path that cannot be read as one.
    """

    def __init__(self, path: str | os.PathLike[str], *, verify_crc: bool = True) -> None:
        self.path = check_regular_file(path)
        self._reader = _core.ModelFileReader(str(self.path), verify_crc)
        r = self._reader
        values, types = r.metadata()
        self.meta = Metadata(self.path, values, types)
        self.format_version = int(r.format_version)
        self.config = self._read_config(r.hparams)
        m = self.meta
        self.tokenizer = TokenizerData(
            tokenizer_json=m.str("edgelut.tokenizer.json", ""),
            chat_template=m.str("tokenizer.chat_template", None),
            bos_token=m.str("edgelut.tokenizer.bos_token", None),
            eos_token=m.str("edgelut.tokenizer.eos_token", None),
            add_bos=m.bool("tokenizer.ggml.add_bos_token", False),
        )
        self.recipe: dict[str, Any] = self._json_object("edgelut.recipe") or {}
        c = self.config
        world = m.int("edgelut.shard.world_size", 1, lo=1, hi=1024)
        cols = m.list("edgelut.shard.ffn_columns", int, [])
        self.shard = ShardSpec(
            m.int("edgelut.shard.rank", 0, lo=0, hi=world - 1),
            world,
            self._ids("edgelut.shard.heads", c.n_heads),
            self._ids("edgelut.shard.kv_heads", c.n_kv_heads),
            [(int(cols[i]), int(cols[i + 1])) for i in range(0, len(cols) - 1, 2)],
            m.bool("edgelut.shard.lm_head", True),
            m.str("edgelut.shard.model_hash", ""),
            self._range("edgelut.shard.embd_columns", c.hidden_size),
            self._range("edgelut.shard.layers", c.n_layers),
        )
        self.data_offset = int(r.data_offset)
        self.file_size = int(r.file_size)
        self.entries: dict[str, TensorEntry] = {}
        for t in r.tensors():
            self.entries[t["name"]] = TensorEntry(
                t["name"],
                t["qtype"],
                tuple(int(d) for d in t["shape"]),
                int(t["offset"]),
                int(t["nbytes"]),
                int(t["crc32"]),
                int(t["group_size"]),
                bool(t["asym"]),
                int(t["super_block"]),
            )
        self.layer_ranges = [(int(o), int(s)) for o, s in r.layers()]
        self._map: np.memmap | None = None

    def _json_object(self, key: str) -> dict[str, Any] | None:
        text = self.meta.str(key, None)
        if not text:
            return None
        try:
            value = json.loads(text)
        except ValueError as e:
            raise self.meta.fail(f"field '{key}' is not valid JSON ({e})") from None
        if not isinstance(value, dict):
            raise self.meta.fail(f"field '{key}' is JSON but not an object")
        return value

    def _range(self, key: str, n: int) -> tuple[int, int] | None:
        v = self.meta.list(key, int, None)
        if v is None:
            return None
        if len(v) != 2 or not 0 <= v[0] < v[1] <= n:
            raise self.meta.fail(f"field '{key}' is not one [begin, end) range inside 0..{n}")
        return int(v[0]), int(v[1])

    def _ids(self, key: str, n: int) -> list[int]:
        ids = self.meta.list(key, int, [])
        if any(not 0 <= i < n for i in ids):
            raise self.meta.fail(f"field '{key}' holds an index outside 0..{n - 1}")
        return ids

    def _read_config(self, h: dict[str, Any]) -> ModelConfig:
        """The hyper-parameters the C++ reader checked, plus the keys only Python reads."""
        m = self.meta
        vocab = int(h["vocab_size"])
        eos = m.list("edgelut.eos_token_ids", int, None)
        one = m.token_id("tokenizer.ggml.eos_token_id", vocab)
        if eos is None:
            eos = [] if one is None else [one]
        elif any(not 0 <= e < vocab for e in eos):
            raise m.fail(f"field 'edgelut.eos_token_ids' holds a token id outside 0..{vocab - 1}")
        try:
            return ModelConfig(
                architecture=h["architecture"],
                vocab_size=vocab,
                hidden_size=int(h["hidden_size"]),
                intermediate_size=int(h["intermediate_size"]),
                n_layers=int(h["n_layers"]),
                n_heads=int(h["n_heads"]),
                n_kv_heads=int(h["n_kv_heads"]),
                head_dim=int(h["head_dim"]),
                rms_norm_eps=float(h["rms_norm_eps"]),
                rope_theta=float(h["rope_theta"]),
                rope_style=h["rope_style"],
                rope_scaling=self._json_object("edgelut.rope_scaling"),
                context_length=int(h["context_length"]),
                tie_embeddings=bool(h["tie_embeddings"]),
                attn_bias=bool(h["attn_bias"]),
                bos_token_id=m.token_id("tokenizer.ggml.bos_token_id", vocab),
                eos_token_ids=tuple(int(e) for e in eos),
                name=m.str("general.name", ""),
                qk_norm=m.bool("edgelut.qk_norm", False),
                post_norms=m.bool("edgelut.post_norms", False),
                ffn_act=m.str("edgelut.ffn_act", "silu"),
                sub_norms=m.bool("edgelut.sub_norms", False),
                act_int8=m.bool("edgelut.act_int8", False),
                embed_scale=m.float("edgelut.embed_scale", 1.0, lo=0.0, hi=1e6),
                attn_scale=m.float("edgelut.attn_scale", 0.0, lo=0.0, hi=1e6),
                rope_dim=m.int("edgelut.rope_dim", 0, lo=0, hi=int(h["head_dim"])),
                rope_mscale=m.float("edgelut.rope_mscale", 1.0, lo=0.0, hi=100.0),
                sliding_window=m.int(f"{h['architecture']}.attention.sliding_window", 0, lo=0, hi=1 << 24),
                sliding_window_pattern=m.int("edgelut.sliding_window_pattern", 0, lo=0, hi=1 << 12),
                rope_local_theta=m.float("edgelut.rope_local_theta", 0.0, lo=0.0, hi=1e12),
                ffn_hadamard=m.int("edgelut.ffn_hadamard", 0, lo=0, hi=1 << 16),
            )
        except ValueError as e:
            raise m.fail(f"bad config: {e}") from None

    # -- access -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self.entries)

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of one tensor (a read-only view of the map)."""
        e = self.entries[name]
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._map[e.offset : e.offset + e.nbytes]

    def tensor(self, name: str) -> PackedMatrix | np.ndarray:
        """A packed tensor as a zero-copy PackedMatrix over the map, a float one as an array."""
        if name not in self.entries:
            raise KeyError(f"{self.path} has no tensor {name!r}")
        e = self.entries[name]
        raw = self.raw(name)
        if e.packed:
            try:
                return from_buffer(raw, e.shape[0], e.shape[1], e.qtype, e.group_size, e.asym, e.super_block)
            except ValueError as err:
                raise ModelFileError(f"{self.path}: tensor {name}: {err}") from err
        return raw.view(np.float32 if e.qtype == "f32" else np.float16).reshape(e.shape)

    def tensors(self) -> dict[str, PackedMatrix | np.ndarray]:
        return {n: self.tensor(n) for n in self.entries}

    def check_tensor_set(self) -> None:
        """Raises ModelFileError unless the tensors are those the config implies (the engine's check)."""
        shapes = {n: e.shape for n, e in self.entries.items()}
        problem = tensor_set_problem(self.config, shapes, self.shard.world_size == 1)
        if problem:
            raise ModelFileError(f"{self.path}: {problem}")

    def verify(self) -> None:
        """Checks every tensor's CRC32; raises ModelFileError naming the first corrupt tensor."""
        self._reader.verify_crcs()

    def close(self) -> None:
        self._reader = None  # type: ignore[assignment]
        self._map = None

    def __enter__(self) -> ModelFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_model_file(path: str | os.PathLike[str], *, verify_crc: bool = True) -> ModelFile:
    """Opens a model file (memory-mapped); CRCs are checked unless verify_crc=False."""
    return ModelFile(path, verify_crc=verify_crc)
