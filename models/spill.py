"""Quantised tensors parked in a temporary file while a conversion streams.

The model file's header lists every tensor's size and CRC before the first
byte of data, so a streaming conversion cannot write tensors straight into
it. Each tensor is appended to a spill file as soon as it is quantised (its
bytes leave memory), and :func:`~edgelut.models.modelfile.write_model_file`
copies them into place, one tensor at a time, once the header is known.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgelut.kernels import PackedMatrix

__all__ = ["SpilledTensor", "TensorSpill", "packed_meta"]


def packed_meta(t: PackedMatrix) -> dict[str, Any]:
    """A packed tensor's entry in the model file's table (and in a spill): type, shape, groups."""
    return {
        "qtype": t.qtype,
        "n": t.n,
        "k": t.k,
        "group": t.group_size,
        "asym": t.asym,
        "super": t.super_block,
    }


@dataclass(frozen=True)
class SpilledTensor:
    """One tensor in a spill file: what the model file's header needs, and its bytes on demand."""

    shape: tuple[int, ...]  # logical: (n, k) for packed tensors
    meta: dict[str, Any]  # qtype (and n, k, group, asym when packed)
    dtype: np.dtype  # int8 for packed bytes, float32 / float16
    nbytes: int
    crc32: int
    fd: int
    offset: int

    @property
    def packed(self) -> bool:
        return self.meta["qtype"] not in ("f32", "f16")

    def read(self) -> np.ndarray:
        buf = os.pread(self.fd, self.nbytes, self.offset)
        if len(buf) != self.nbytes:
            raise RuntimeError(f"spill file is short: read {len(buf)} of {self.nbytes} bytes")
        return np.frombuffer(buf, dtype=self.dtype)


class TensorSpill:
    """An anonymous temporary file (gone when closed, or if the process dies) in ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (closed by close())
        self._end = 0

    def put(self, name: str, t: PackedMatrix | np.ndarray, float_type: str = "f32") -> SpilledTensor:
        if isinstance(t, PackedMatrix):
            data = np.asarray(t.data).view(np.int8)
            meta = packed_meta(t)
            shape: tuple[int, ...] = (t.n, t.k)
        else:
            a = np.asarray(t)
            if not np.issubdtype(a.dtype, np.floating):
                raise ValueError(f"tensor {name} must be float or packed, got dtype {a.dtype}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"tensor {name} contains NaN or infinity")
            data = np.ascontiguousarray(a, dtype=np.float32 if float_type == "f32" else np.float16)
            meta, shape = {"qtype": float_type}, tuple(a.shape)
        raw = data.reshape(-1).view(np.uint8)
        view, done = memoryview(raw), 0
        while done < raw.nbytes:  # pwrite may write less than asked for
            done += os.pwrite(self._file.fileno(), view[done:], self._end + done)
        out = SpilledTensor(
            shape,
            meta,
            data.dtype,
            raw.nbytes,
            zlib.crc32(raw) & 0xFFFFFFFF,
            self._file.fileno(),
            self._end,
        )
        self._end += raw.nbytes
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TensorSpill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
