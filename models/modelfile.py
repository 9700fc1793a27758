"""The edgelut model file: writer and memory-mapped reader (spec: docs/FORMAT.md, "Model file").

A model file is a GGUF container written with ``gguf.GGUFWriter`` (so the
standard gguf tools can list it) with 4096-byte tensor alignment. Linear
weights are raw 1-D I8 tensors holding exactly the bytes of a
:class:`~edgelut.kernels.PackedMatrix`; their logical shape and type live in
``edgelut.tensor.<name>.*`` keys. Every tensor carries a CRC32. Tensors are
ordered by layer so that one layer is one contiguous byte range, which is also
recorded (``edgelut.layer.offsets`` / ``edgelut.layer.sizes``) for the pager.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgelut.kernels import GROUP_SIZES, QTYPES, PackedMatrix, from_buffer
from edgelut.models.config import LAYER_TENSORS, ModelConfig, TokenizerData
from edgelut.models.spill import SpilledTensor

__all__ = [
    "ALIGNMENT",
    "FORMAT_VERSION",
    "ModelFile",
    "ShardSpec",
    "TensorEntry",
    "expected_tensors",
    "read_model_file",
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

    @property
    def packed(self) -> bool:
        return self.qtype not in FLOAT_TYPES

    @property
    def n_weights(self) -> int:
        return int(np.prod(self.shape))


def expected_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name the config implies, with its (N, K) or (N,) shape, in file order."""
    h, hd = config.hidden_size, config.head_dim
    q, kv = config.n_heads * hd, config.n_kv_heads * hd
    per_layer = {
        "attn_norm.weight": (h,),
        "attn_q.weight": (q, h),
        "attn_q.bias": (q,),
        "attn_k.weight": (kv, h),
        "attn_k.bias": (kv,),
        "attn_v.weight": (kv, h),
        "attn_v.bias": (kv,),
        "attn_output.weight": (h, q),
        "ffn_norm.weight": (h,),
        "ffn_gate.weight": (config.intermediate_size, h),
        "ffn_up.weight": (config.intermediate_size, h),
        "ffn_down.weight": (h, config.intermediate_size),
    }
    out: dict[str, tuple[int, ...]] = {"token_embd.weight": (config.vocab_size, h)}
    for i in range(config.n_layers):
        for name in LAYER_TENSORS:
            if name.endswith(".bias") and not config.attn_bias:
                continue
            out[f"blk.{i}.{name}"] = per_layer[name]
    out["output_norm.weight"] = (h,)
    if not config.tie_embeddings:
        out["output.weight"] = (config.vocab_size, h)
    return out


def _shape_of(t: PackedMatrix | SpilledTensor | np.ndarray) -> tuple[int, ...]:
    if isinstance(t, PackedMatrix):
        return (t.n, t.k)
    return t.shape if isinstance(t, SpilledTensor) else tuple(np.shape(t))


def _check_spec(config: ModelConfig, tensors: dict[str, Any], shard: ShardSpec) -> None:
    """Refuses, before a byte is written, a tensor set that does not match the config."""
    want = expected_tensors(config)
    if shard.world_size == 1:
        missing = [n for n in want if n not in tensors]
        if missing:
            raise ValueError(f"model is missing tensor(s) {', '.join(missing[:5])} required by its config")
    extra = [n for n in tensors if n not in want]
    if extra:
        raise ValueError(f"unexpected tensor(s) {', '.join(extra[:5])} for a {config.architecture} config")
    for name, t in tensors.items():
        got = _shape_of(t)
        if shard.world_size == 1 and got != want[name]:
            raise ValueError(f"tensor {name} has shape {got}, the config implies {want[name]}")
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
    import gguf  # deferred: only the writer and the reader need it

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
            meta = {"qtype": t.qtype, "n": t.n, "k": t.k, "group": t.group_size, "asym": t.asym}
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
    w.add_string("edgelut.rope_style", config.rope_style)
    w.add_bool("edgelut.tie_embeddings", config.tie_embeddings)
    w.add_bool("edgelut.attn_bias", config.attn_bias)
    if config.bos_token_id is not None:
        w.add_uint32("tokenizer.ggml.bos_token_id", config.bos_token_id)
    if config.eos_token_ids:
        w.add_uint32("tokenizer.ggml.eos_token_id", config.eos_token_ids[0])
        w.add_key_value("edgelut.eos_token_ids", list(config.eos_token_ids), gguf.GGUFValueType.ARRAY, u32)
    # Tokenizer.
    w.add_string("edgelut.tokenizer.json", tokenizer.tokenizer_json)
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
    """A memory-mapped edgelut model file; open with :func:`read_model_file`."""

    def __init__(self, path: str | os.PathLike[str], *, verify_crc: bool = True) -> None:
        self.path = Path(path)
        self._reader = _open_gguf(self.path)
        r = self._reader
        fields = r.fields

        def get(key: str, default: Any = None) -> Any:
            f = fields.get(key)
            return default if f is None else f.contents()

        self._get = get
        if get(KEY_VERSION) is None:
            if get("general.architecture") is not None:
                raise ValueError(
                    f"{self.path} is a llama.cpp GGUF, not an edgelut model file; "
                    "convert it with edgelut quantize"
                )
            raise ValueError(
                f"{self.path} is a GGUF file without edgelut metadata; convert it with edgelut quantize"
            )
        self.format_version = int(get(KEY_VERSION))
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"{self.path} has format version {self.format_version}, this edgelut reads up to "
                f"{FORMAT_VERSION}; upgrade edgelut"
            )
        if r.alignment != ALIGNMENT:
            raise ValueError(f"{self.path} has alignment {r.alignment}, expected {ALIGNMENT}")
        try:
            self.config = self._read_config()
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.path} has a bad config: {e}") from e
        self.tokenizer = TokenizerData(
            tokenizer_json=get("edgelut.tokenizer.json", ""),
            chat_template=get("tokenizer.chat_template"),
            bos_token=get("edgelut.tokenizer.bos_token"),
            eos_token=get("edgelut.tokenizer.eos_token"),
            add_bos=bool(get("tokenizer.ggml.add_bos_token", False)),
        )
        self.recipe: dict[str, Any] = json.loads(get("edgelut.recipe", "{}"))
        cols = get("edgelut.shard.ffn_columns", [])
        self.shard = ShardSpec(
            int(get("edgelut.shard.rank", 0)),
            int(get("edgelut.shard.world_size", 1)),
            list(get("edgelut.shard.heads", [])),
            list(get("edgelut.shard.kv_heads", [])),
            [(int(cols[i]), int(cols[i + 1])) for i in range(0, len(cols) - 1, 2)],
        )
        self.data_offset = int(r.data_offset)
        self.file_size = os.path.getsize(self.path)
        self.entries: dict[str, TensorEntry] = {}
        for t in r.tensors:
            self.entries[t.name] = self._entry(t)
        offs, sizes = get("edgelut.layer.offsets", []), get("edgelut.layer.sizes", [])
        self.layer_ranges = [(self.data_offset + int(o), int(s)) for o, s in zip(offs, sizes, strict=False)]
        for o, s in self.layer_ranges:
            if o + s > self.file_size:
                raise ValueError(f"{self.path} is truncated: a layer range ends at {o + s} past the file end")
        if verify_crc:
            self.verify()

    def _read_config(self) -> ModelConfig:
        get = self._get
        arch = get("general.architecture")
        scaling = get("edgelut.rope_scaling")
        eos = get("edgelut.eos_token_ids")
        if eos is None:
            eos = [] if get("tokenizer.ggml.eos_token_id") is None else [get("tokenizer.ggml.eos_token_id")]
        required = {
            "vocab_size": "vocab_size",
            "hidden_size": "embedding_length",
            "intermediate_size": "feed_forward_length",
            "n_layers": "block_count",
            "n_heads": "attention.head_count",
            "n_kv_heads": "attention.head_count_kv",
            "head_dim": "attention.key_length",
        }
        values = {}
        for attr, key in required.items():
            v = get(f"{arch}.{key}")
            if v is None:
                raise ValueError(f"missing key {arch}.{key}")
            values[attr] = int(v)
        return ModelConfig(
            architecture=arch,
            **values,
            rms_norm_eps=float(get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(get(f"{arch}.rope.freq_base", 10000.0)),
            rope_style=get("edgelut.rope_style", "neox"),
            rope_scaling=json.loads(scaling) if scaling else None,
            context_length=int(get(f"{arch}.context_length", 2048)),
            tie_embeddings=bool(get("edgelut.tie_embeddings", False)),
            attn_bias=bool(get("edgelut.attn_bias", False)),
            bos_token_id=get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=tuple(int(e) for e in eos),
            name=get("general.name", ""),
        )

    def _entry(self, t: Any) -> TensorEntry:
        key = f"edgelut.tensor.{t.name}"
        qtype = self._get(f"{key}.qtype")
        crc = self._get(f"{key}.crc32")
        if qtype is None or crc is None:
            raise ValueError(f"{self.path}: tensor {t.name} has no edgelut.tensor metadata")
        offset, nbytes = int(t.data_offset), int(t.n_bytes)
        if offset + nbytes > self.file_size:
            raise ValueError(f"{self.path} is truncated: tensor {t.name} ends past the end of the file")
        if qtype in FLOAT_TYPES:
            want = {"f32": 0, "f16": 1}[qtype]
            if int(t.tensor_type) != want:
                raise ValueError(
                    f"{self.path}: tensor {t.name} is stored as GGML type {int(t.tensor_type)}, not {qtype}"
                )
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            return TensorEntry(t.name, qtype, shape, offset, nbytes, int(crc))
        if qtype not in QTYPES:
            raise ValueError(f"{self.path}: tensor {t.name} has unknown type {qtype!r}")
        n, k = int(self._get(f"{key}.n", 0)), int(self._get(f"{key}.k", 0))
        group, asym = int(self._get(f"{key}.group", 0)), bool(self._get(f"{key}.asym", False))
        if group not in GROUP_SIZES:
            raise ValueError(f"{self.path}: tensor {t.name} has bad group size {group}")
        return TensorEntry(t.name, qtype, (n, k), offset, nbytes, int(crc), group, asym)

    # -- access -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self.entries)

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of one tensor (a read-only view of the map)."""
        e = self.entries[name]
        return self._reader.data[e.offset : e.offset + e.nbytes]

    def tensor(self, name: str) -> PackedMatrix | np.ndarray:
        """A packed tensor as a zero-copy PackedMatrix over the map, a float one as an array."""
        if name not in self.entries:
            raise KeyError(f"{self.path} has no tensor {name!r}")
        e = self.entries[name]
        raw = self.raw(name)
        if e.packed:
            try:
                return from_buffer(raw, e.shape[0], e.shape[1], e.qtype, e.group_size, e.asym)
            except ValueError as err:
                raise ValueError(f"{self.path}: tensor {name}: {err}") from err
        return raw.view(np.float32 if e.qtype == "f32" else np.float16).reshape(e.shape)

    def tensors(self) -> dict[str, PackedMatrix | np.ndarray]:
        return {n: self.tensor(n) for n in self.entries}

    def verify(self) -> None:
        """Checks every tensor's CRC32; raises ValueError naming the first corrupt tensor."""
        for name, e in self.entries.items():
            got = zlib.crc32(self.raw(name)) & 0xFFFFFFFF
            if got != e.crc32:
                raise ValueError(
                    f"{self.path} is corrupt: tensor {name} has CRC32 {got:08x}, expected {e.crc32:08x}"
                )

    def close(self) -> None:
        self._reader = None  # type: ignore[assignment]

    def __enter__(self) -> ModelFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_gguf(path: Path) -> Any:
    import gguf

    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path} is not an edgelut model file (no GGUF magic)")
    if size < 24:
        raise ValueError(f"{path} is truncated ({size} bytes)")
    # Structural check first with the C++ parser: it is bounded (never allocates or loops
    # on a corrupt count) and fast on foreign files with large vocabularies, where
    # gguf.GGUFReader would parse every token string in Python before we could say no.
    from edgelut import _core

    _core.ModelFileReader(str(path), False)
    try:
        return gguf.GGUFReader(path, "r")
    except Exception as e:  # the gguf reader raises many types on damaged input
        raise ValueError(f"{path} is truncated or corrupt ({type(e).__name__}: {e})") from e


def read_model_file(path: str | os.PathLike[str], *, verify_crc: bool = True) -> ModelFile:
    """Opens a model file (memory-mapped); CRCs are checked unless verify_crc=False."""
    return ModelFile(path, verify_crc=verify_crc)
