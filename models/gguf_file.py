"""The one way Python opens an untrusted GGUF file (an edgelut model file or a llama.cpp source).

The container (header, every metadata value, every tensor info) is parsed by the
bounded C++ reader ``_core.read_gguf`` (csrc/io/gguf.cc): every count, length,
type and offset is checked against the file size before anything is allocated
or looped over, duplicate keys and tensor names are refused, and a special file
(directory, FIFO, device) is refused before it is opened. Tensor bytes are read
through a ``numpy.memmap``. Metadata is read back through typed getters, so a
value of the wrong type or out of range is one :class:`ModelFileError` naming
the file and the key, never a TypeError deep in a caller.

Errors: :class:`ModelFileError` (a ValueError) for content, ``FileNotFoundError``
for a missing path, :class:`FileAccessError` (an OSError) for a path that
cannot be read as a file. The ``gguf`` package is used for writing only.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgelut import _core

ModelFileError = _core.ModelFileError
FileAccessError = _core.FileAccessError

__all__ = ["FileAccessError", "GGUFFile", "GGUFTensor", "Metadata", "ModelFileError", "check_regular_file"]

_MISSING = object()

# Plain (one element per block) ggml types as numpy dtypes; the others are kept
# as rows of raw bytes, the layout gguf.quants.dequantize takes.
_PLAIN_DTYPES = {
    0: np.float32,
    1: np.float16,
    24: np.int8,
    25: np.int16,
    26: np.int32,
    27: np.int64,
    28: np.float64,
}


def check_regular_file(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is an existing regular file; refuses anything else without opening it."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{p} does not exist") from None
    except OSError as e:
        raise FileAccessError(f"{p}: cannot open: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        kinds = {
            stat.S_ISDIR: "a directory",
            stat.S_ISFIFO: "a FIFO",
            stat.S_ISCHR: "a character device",
            stat.S_ISBLK: "a block device",
            stat.S_ISSOCK: "a socket",
        }
        kind = next((k for test, k in kinds.items() if test(st.st_mode)), "not a regular file")
        raise FileAccessError(f"{p} is {kind}, not a model file")
    return p


class Metadata:
    """Typed, checked access to GGUF metadata; every refusal names the file and the key."""

    def __init__(self, path: Path, values: dict[str, Any], types: dict[str, str]) -> None:
        self.path = path
        self.values = values
        self.types = types

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def fail(self, what: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {what}")

    def _get(self, key: str, default: Any) -> Any:
        if key in self.values:
            return self.values[key]
        if default is _MISSING:
            raise self.fail(f"missing key '{key}'")
        return default

    def _wrong(self, key: str, expected: str) -> ModelFileError:
        return self.fail(f"field '{key}' is a {self.types.get(key, '?')}, expected {expected}")

    def int(self, key: str, default: Any = _MISSING, *, lo: int | None = None, hi: int | None = None) -> Any:
        v = self._get(key, default)
        if key not in self.values:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._wrong(key, "an integer")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.fail(f"field '{key}' has impossible value {v} (expected {lo}..{hi})")
        return v

    def float(self, key: str, default: Any = _MISSING, *, lo: float, hi: float) -> Any:
        """A finite number in [lo, hi] (integers accepted)."""
        v = self._get(key, default)
        if key not in self.values:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self._wrong(key, "a number")
        if not (math.isfinite(v) and lo <= v <= hi):
            raise self.fail(
                f"field '{key}' has impossible value {v} (expected a finite number in [{lo}, {hi}])"
            )
        return float(v)

    def str(self, key: str, default: Any = _MISSING) -> Any:
        v = self._get(key, default)
        if key in self.values and not isinstance(v, str):
            raise self._wrong(key, "a string")
        return v

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        v = self._get(key, default)
        if key in self.values and not isinstance(v, (bool, int)):
            raise self._wrong(key, "a bool")
        return v if key not in self.values else bool(v)

    def list(self, key: str, elem: type, default: Any = _MISSING) -> Any:
        """An array whose elements are all ``elem`` (int, float or str; ints pass as float)."""
        v = self._get(key, default)
        if key not in self.values:
            return v
        ok = (float, int) if elem is float else elem
        if not isinstance(v, list) or not all(isinstance(x, ok) and not isinstance(x, bool) for x in v):
            raise self._wrong(key, f"an array of {elem.__name__}")
        return v

    def token_id(self, key: str, n_vocab: int) -> int | None:
        """An optional token id, which must index the vocabulary."""
        return self.int(key, None, lo=0, hi=n_vocab - 1)


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # outermost first (GGUF lists the fastest dimension first)
    type: int  # ggml type id
    type_name: str  # "F32", "Q4_1", ...
    offset: int  # absolute file offset
    nbytes: int


class GGUFFile:
    """Metadata and tensor infos of a GGUF file, tensor bytes through a read-only memmap."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = check_regular_file(path)
        g = _core.read_gguf(str(self.path))
        self.version: int = g["version"]
        self.alignment: int = g["alignment"]
        self.data_offset: int = g["data_offset"]
        self.file_size: int = g["file_size"]
        self.meta = Metadata(self.path, g["metadata"], g["types"])
        self.tensors = [GGUFTensor(**t) for t in g["tensors"]]
        self._map: np.memmap | None = None

    def tensor(self, name: str) -> GGUFTensor | None:
        return next((t for t in self.tensors if t.name == name), None)

    def raw(self, t: GGUFTensor) -> np.ndarray:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        if t.offset + t.nbytes > self._map.size:  # the file shrank since it was parsed
            raise ModelFileError(f"{self.path}: truncated: tensor '{t.name}' ends past the end of the file")
        return self._map[t.offset : t.offset + t.nbytes]

    def data(self, t: GGUFTensor) -> np.ndarray:
        """Plain types as their dtype in ``shape``; block types as rows of raw bytes (for dequantisation)."""
        raw = self.raw(t)
        dtype = _PLAIN_DTYPES.get(t.type)
        if dtype is not None:
            return raw.view(dtype).reshape(t.shape)
        row_bytes = t.nbytes // max(1, int(np.prod(t.shape[:-1])))
        return raw.reshape(*t.shape[:-1], row_bytes)
