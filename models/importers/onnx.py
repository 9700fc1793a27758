"""ONNX importer for decoders exported in optimum's layout.

optimum (torch.onnx underneath) writes ``model.onnx`` next to config.json and
the tokenizer files. Weights are initializers: most keep their HF names
(``model.layers.0.input_layernorm.weight``), but linear weights often become
anonymous ``onnx::MatMul_123`` tensors holding W^T. Those are recovered from the
graph: the MatMul node that reads them is named after the module
(``/model/layers.0/self_attn/q_proj/MatMul``).

Nothing is loaded whole: the graph is parsed without its weights' bytes
(:func:`read_skeleton`), and each weight is a RowSource that reads the rows the
converter asks for from the graph file or the external data file with pread, so
a conversion holds a block of rows at a time, not the float model.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from edgelut.models.config import ARCHITECTURES, ImportedModel
from edgelut.models.importers import Importer, register_importer
from edgelut.models.importers.huggingface import (
    arch_of,
    check_tensors,
    config_from_hf,
    expected_shapes,
    hf_to_gguf_name,
    read_json,
    split_fused,
    tokenizer_from_dir,
)
from edgelut.models.lazy import LazyTensors, RowSource, pread_exact, to_float32

# Graph ops that mean the weights are already quantised by ONNX tooling.
_QUANTISED_OPS = {"MatMulNBits", "MatMulInteger", "DequantizeLinear", "QLinearMatMul", "GatherBlockQuantized"}


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError as e:
        raise RuntimeError("importing ONNX models needs the `onnx` package; pip install edgelut[onnx]") from e
    return onnx


def module_param_from_node(node_name: str) -> str | None:
    """'/model/layers.0/self_attn/q_proj/MatMul' -> 'model.layers.0.self_attn.q_proj.weight'."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 2:
        return None
    return ".".join(parts[:-1]) + ".weight"


def find_onnx_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in ("model.onnx", "decoder_model_merged.onnx", "decoder_model.onnx"):
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.onnx"))
    if len(found) != 1:
        raise ValueError(f"{path}: expected one .onnx file (or model.onnx), found {len(found)}")
    return found[0]


# Field numbers of onnx.proto3 that the skeleton reader needs: ModelProto.graph,
# GraphProto.initializer, TensorProto.raw_data; wire type 2 is length-delimited.
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA, _LEN = 7, 5, 9, 2


def _read_varint(f: BinaryIO) -> int:
    value = shift = 0
    while True:
        b = f.read(1)
        if not b or shift > 63:
            raise ValueError("a truncated or overlong varint")
        value |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return value
        shift += 7


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _fields(f: BinaryIO, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, payload start, field end) of each field of the
    message in bytes [start, end) of the file; payloads are not read."""
    pos = start
    while pos < end:
        f.seek(pos)
        key = _read_varint(f)
        field, wire = key >> 3, key & 7
        payload = f.tell()
        if wire == 0:
            _read_varint(f)
            stop = f.tell()
        elif wire == _LEN:
            n = _read_varint(f)
            payload = f.tell()
            stop = payload + n
        elif wire in (1, 5):
            stop = payload + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"wire type {wire} at byte {pos}")
        if stop > end:
            raise ValueError(f"a field at byte {pos} runs past its message")
        yield field, wire, pos, payload, stop
        pos = stop


def _span(f: BinaryIO, a: int, b: int) -> bytes:
    f.seek(a)
    return f.read(b - a)


def read_skeleton(path: Path) -> tuple[bytes, list[tuple[int, int] | None]]:
    """The model's bytes without its initializers' raw_data, and where each one's raw_data is in
    the file ((offset, length), or None), in the order of the graph's initializers.

    onnx.load reads the whole file and parses it, holding the weights twice; this walks
    the protobuf fields instead, copying all but the raw weights (which stay in the file
    to be read with pread, as external data is).
    """
    out, raws = bytearray(), []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for field, wire, at, payload, stop in list(_fields(f, 0, size)):
            if (field, wire) != (_MODEL_GRAPH, _LEN):
                out += _span(f, at, stop)
                continue
            graph = bytearray()
            for g_field, g_wire, g_at, g_payload, g_stop in list(_fields(f, payload, stop)):
                if (g_field, g_wire) != (_GRAPH_INITIALIZER, _LEN):
                    graph += _span(f, g_at, g_stop)
                    continue
                tensor, raw = bytearray(), None
                for t_field, t_wire, t_at, t_payload, t_stop in list(_fields(f, g_payload, g_stop)):
                    if (t_field, t_wire) == (_TENSOR_RAW_DATA, _LEN):
                        raw = (t_payload, t_stop - t_payload)
                    else:
                        tensor += _span(f, t_at, t_stop)
                raws.append(raw)
                graph += _varint(_GRAPH_INITIALIZER << 3 | _LEN) + _varint(len(tensor)) + tensor
            out += _varint(_MODEL_GRAPH << 3 | _LEN) + _varint(len(graph)) + graph
    return bytes(out), raws


# ONNX TensorProto data types the importer reads -> (numpy storage type, bfloat16 bits?).
_DTYPES = {
    1: (np.float32, False),  # FLOAT
    10: (np.float16, False),  # FLOAT16
    11: (np.float64, False),  # DOUBLE
    16: (np.uint16, True),  # BFLOAT16: stored as the top half of a float32
}
# Reads of W^T columns and tensor comparisons go through buffers of about this many bytes.
BLOCK_BYTES = 1 << 22


def _pread_into(fd: int, buf: np.ndarray, offset: int, path: Path) -> None:
    pread_exact(fd, buf, offset, f"{path}: truncated (a tensor's bytes run past the end of the file)")


@dataclass(frozen=True)
class _Stored:
    """One initializer as stored: bytes at ``offset`` of ``path`` (external data, or the raw_data
    of the graph file itself), read with pread when rows are asked for; or values in the
    typed fields of its TensorProto (``proto``, small tensors in memory with the graph)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    bf16: bool
    proto: Any = None
    path: Path | None = None
    offset: int = 0

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def inline(self) -> np.ndarray:
        """The values of the graph's typed fields (a transient array on every call)."""
        t = self.proto
        if t.data_type in (1, 11):  # FLOAT, DOUBLE: their own typed fields
            typed = t.float_data if t.data_type == 1 else t.double_data
            return np.asarray(typed, dtype=self.dtype).reshape(self.shape)
        # 16-bit types: each value's bits in the low half of an int32_data entry
        return np.asarray(t.int32_data, np.uint32).astype(np.uint16).view(self.dtype).reshape(self.shape)

    def rows(self, a: int, b: int) -> np.ndarray:
        """Stored rows [a, b) as float32."""
        if self.proto is not None:
            return to_float32(np.array(self.inline()[a:b]), self.bf16)
        out = np.empty((b - a, *self.shape[1:]), dtype=self.dtype)
        with open(self.path, "rb") as f:  # type: ignore[arg-type]
            _pread_into(f.fileno(), out, self.offset + a * self.row_bytes, self.path)  # type: ignore[arg-type]
        return to_float32(out, self.bf16)

    def columns(self, a: int, b: int) -> np.ndarray:
        """Columns [a, b) of a stored 2-D tensor, transposed: rows [a, b) of the W that W^T holds.

        Filled a block of stored rows at a time, so nothing but the result and one block is held
        (an inline tensor: and its transient copy).
        """
        n_rows, n_cols = self.shape
        out = np.empty((b - a, n_rows), dtype=np.float32)
        size = self.dtype.itemsize
        whole_rows = 2 * (b - a) >= n_cols  # most of each row: read whole rows, else just the band
        step = max(1, BLOCK_BYTES // ((n_cols if whole_rows else b - a) * size))
        data = self.inline() if self.proto is not None else None
        with contextlib.ExitStack() as stack:
            fd = None if data is not None else stack.enter_context(open(self.path, "rb")).fileno()  # type: ignore[arg-type]
            for r in range(0, n_rows, step):
                s = min(n_rows, r + step) - r
                if data is not None:
                    block = data[r : r + s, a:b]
                elif whole_rows:
                    block = np.empty((s, n_cols), dtype=self.dtype)
                    _pread_into(fd, block, self.offset + r * self.row_bytes, self.path)  # type: ignore[arg-type]
                    block = block[:, a:b]
                else:
                    block = np.empty((s, b - a), dtype=self.dtype)
                    for i in range(s):
                        at = self.offset + ((r + i) * n_cols + a) * size
                        _pread_into(fd, block[i], at, self.path)  # type: ignore[arg-type]
                out[:, r : r + s] = to_float32(block, self.bf16).T
        return out


@dataclass(frozen=True)
class _Weight:
    """A model weight: a stored initializer, read as is or as the W its W^T holds; Gemma's norms + 1."""

    stored: _Stored
    transposed: bool = False
    plus_one: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return self.stored.shape[::-1] if self.transposed else self.stored.shape

    def flipped(self) -> _Weight:
        return replace(self, transposed=not self.transposed)

    def read_rows(self, a: int, b: int) -> np.ndarray:
        w = self.stored.columns(a, b) if self.transposed else self.stored.rows(a, b)
        return w + np.float32(1.0) if self.plus_one else w

    def source(self) -> RowSource:
        return RowSource(self.shape, self.read_rows)


def _equal(x: _Weight, y: _Weight) -> bool:
    """np.array_equal of the two weights, read a block of rows at a time (no whole copies)."""
    if x.shape != y.shape or not x.shape:
        return False
    step = max(1, BLOCK_BYTES // max(1, 4 * math.prod(x.shape[1:])))
    if x.stored.proto is not None or y.stored.proto is not None:
        step = x.shape[0]  # every read of typed-field values builds all of them: read them once
    return all(
        np.array_equal(x.read_rows(a, min(a + step, x.shape[0])), y.read_rows(a, min(a + step, x.shape[0])))
        for a in range(0, x.shape[0], step)
    )


def _external(t: Any, directory: Path, onnx_path: Path, need: int) -> tuple[Path, int]:
    """(data file, offset) of an external initializer, checked before anything is read: the
    location stays inside the model's directory, and the byte range fits its shape and the file."""
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    if not location:
        raise ValueError(f"{onnx_path}: tensor {t.name} is external but names no location")
    if Path(location).is_absolute():
        raise ValueError(f"{onnx_path}: tensor {t.name} has external data at absolute path {location!r}")
    path = directory / location
    if not path.resolve().is_relative_to(directory.resolve()):
        raise ValueError(
            f"{onnx_path}: tensor {t.name} has external data {location!r} outside the model directory"
        )
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", need))
        size = path.stat().st_size
    except ValueError as e:
        raise ValueError(
            f"{path}: tensor {t.name} has a malformed external data offset or length ({e})"
        ) from e
    except OSError as e:
        raise ValueError(f"{path}: cannot read the external data of tensor {t.name} ({e.strerror})") from e
    if not path.is_file():
        raise ValueError(f"{path}: the external data of tensor {t.name} is not a regular file")
    if length != need:
        raise ValueError(
            f"{path}: tensor {t.name} has {length} bytes of external data, its shape needs {need}"
        )
    if offset < 0 or offset + length > size:
        raise ValueError(
            f"{path}: tensor {t.name} needs bytes [{offset}, {offset + length}) of a file of {size} bytes"
        )
    return path, offset


def _stored(t: Any, directory: Path, onnx_path: Path, raw: tuple[int, int] | None) -> _Stored:
    """Where an initializer's values are, checked against its shape and type (nothing is read);
    ``raw``: (offset, length) of its raw_data in the graph file."""
    if t.data_type not in _DTYPES:
        from onnx import TensorProto

        kind = TensorProto.DataType.Name(t.data_type)
        raise ValueError(
            f"{onnx_path}: tensor {t.name} has data type {kind} (float32, float16 or bfloat16 expected)"
        )
    np_dtype, bf16 = _DTYPES[t.data_type]
    dtype = np.dtype(np_dtype)
    shape = tuple(int(d) for d in t.dims)
    if any(d < 0 for d in shape):
        raise ValueError(f"{onnx_path}: tensor {t.name} has a negative dimension {shape}")
    need = math.prod(shape) * dtype.itemsize
    if t.data_location == 1:  # TensorProto.EXTERNAL
        path, offset = _external(t, directory, onnx_path, need)
        return _Stored(t.name, shape, dtype, bf16, path=path, offset=offset)
    if raw is not None:
        if raw[1] != need:
            raise ValueError(f"{onnx_path}: tensor {t.name} has {raw[1]} bytes, its shape needs {need}")
        return _Stored(t.name, shape, dtype, bf16, path=onnx_path, offset=raw[0])
    typed = {1: t.float_data, 11: t.double_data}.get(t.data_type, t.int32_data)
    if len(typed) != math.prod(shape):
        raise ValueError(
            f"{onnx_path}: tensor {t.name} has {len(typed)} values, its shape needs {math.prod(shape)}"
        )
    return _Stored(t.name, shape, dtype, bf16, proto=t)


def weights_from_graph(
    graph: Any, onnx_path: Path, arch: str = "llama", raws: list[tuple[int, int] | None] | None = None
) -> dict[str, _Weight]:
    """GGUF-named weights from a graph's initializers, unread (orientation not yet checked).

    ``raws``: where each initializer's raw_data is in the file (:func:`read_skeleton`).
    Gemma's ``(1 + w)`` norms are folded as the HF importer does, as rows are read.
    """
    directory = onnx_path.parent
    inits = {t.name: t for t in graph.initializer}
    raw_at = dict(zip((t.name for t in graph.initializer), raws or [], strict=False))
    stored: dict[str, _Stored] = {}

    def get(name: str) -> _Stored:
        if name not in stored:
            stored[name] = _stored(inits[name], directory, onnx_path, raw_at.get(name))
        return stored[name]

    out: dict[str, _Weight] = {}
    for name in inits:
        gg = hf_to_gguf_name(name, arch)
        if gg is not None:
            out[gg] = _Weight(get(name))
    # Anonymous linear weights: name them after the MatMul/Gemm node that reads them.
    for node in graph.node:
        if node.op_type in _QUANTISED_OPS:
            raise ValueError(
                f"{onnx_path}: the graph is already quantised ({node.op_type}); export a float model"
            )
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if hf_to_gguf_name(node.input[1], arch) is not None:
            continue  # named; taken above
        param = module_param_from_node(node.name)
        gg = hf_to_gguf_name(param, arch) if param else None
        if gg is None or gg in out:
            continue
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        # MatMul computes x @ B, so B is W^T (K, N); Gemm with transB=1 stores W (N, K).
        w = _Weight(get(node.input[1]))
        out[gg] = w if trans_b or len(w.shape) != 2 else w.flipped()
    if ARCHITECTURES[arch].norm_plus_one:
        out = {k: replace(v, plus_one=True) if k.endswith("norm.weight") else v for k, v in out.items()}
    return out


def orient(weights: dict[str, _Weight], shapes: dict[str, tuple[int, ...]]) -> None:
    """Transpose named 2-D weights that were stored as W^T (square ones are trusted as named)."""
    for name, w in weights.items():
        want = shapes.get(name)
        if want and len(w.shape) == 2 and w.shape != want and w.shape[::-1] == want:
            weights[name] = w.flipped()


@register_importer("onnx")
class ONNXImporter(Importer):
    @classmethod
    def can_load(cls, path: Path) -> bool:
        if path.is_file():
            return path.suffix.lower() == ".onnx"
        return path.is_dir() and any(path.glob("*.onnx")) and (path / "config.json").is_file()

    def load(self, path: Path) -> ImportedModel:
        onnx = _require_onnx()
        onnx_path = find_onnx_file(path)
        directory = onnx_path.parent
        cfg_path = directory / "config.json"
        if not cfg_path.is_file():
            raise ValueError(f"{onnx_path}: no config.json beside it (optimum exports write one)")
        try:
            # The weights stay in their files (the graph's own raw_data, or external data):
            # their rows are read when converted.
            skeleton, raws = read_skeleton(onnx_path)
            proto = onnx.ModelProto()
            proto.ParseFromString(skeleton)
        except Exception as e:  # protobuf and the field walk raise assorted types on bad bytes
            raise ValueError(f"{onnx_path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
        if len(raws) != len(proto.graph.initializer):
            raise ValueError(f"{onnx_path}: not a readable ONNX model (initializers out of step)")
        cfg_json = read_json(cfg_path)
        weights = weights_from_graph(proto.graph, onnx_path, arch_of(cfg_json, onnx_path), raws)
        if "token_embd.weight" not in weights:
            raise ValueError(
                f"{onnx_path}: no model.embed_tokens.weight initializer; export with parameter names"
            )
        # A tied lm_head is often exported as its own (transposed) copy of the embedding.
        head, emb = weights.get("output.weight"), weights["token_embd.weight"]
        if head is not None and (_equal(head, emb) or _equal(head.flipped(), emb)):
            del weights["output.weight"]
        config = config_from_hf(
            cfg_json,
            onnx_path,
            tied="output.weight" not in weights,
            bias="blk.0.attn_q.bias" in weights,
        )
        orient(weights, expected_shapes(config))
        tensors = LazyTensors()
        for name, w in weights.items():
            tensors.add(name, w.source())
        if ARCHITECTURES[config.architecture].fused_qkv:
            split_fused(tensors, config)  # Phi-3: parts that read their rows of the fused tensors
        missing = [n for n in expected_shapes(config) if n not in tensors]
        if missing:
            raise ValueError(
                f"{onnx_path}: cannot locate weight {missing[0]} (and {len(missing) - 1} more); the export "
                f"must keep parameter names or module-named MatMul nodes (as optimum's export does)"
            )
        check_tensors(tensors, config, onnx_path)
        return ImportedModel(
            config=config, tensors=tensors, tokenizer=tokenizer_from_dir(directory), source=str(onnx_path)
        )
