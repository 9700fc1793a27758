"""Tensors read from the source when asked for, never all at once.

An importer that can read a tensor (or a range of its rows) on its own fills a
:class:`LazyTensors` with one :class:`RowSource` per tensor, so the streaming
quantiser holds one tensor, or a block of rows of one, at a time: converting
a model needs memory for its largest tensor, not for the whole model in float.
Setting a name stores a concrete value (tests and importers may override).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LazyTensors", "RowSource", "pread_exact", "tensor_rows", "tensor_shape", "to_float32"]


@dataclass(frozen=True)
class RowSource:
    """A tensor of ``shape`` whose rows [a, b) ``read_rows(a, b)`` produces (float32, or any value)."""

    shape: tuple[int, ...]
    read_rows: Callable[[int, int], Any]

    def read(self) -> Any:
        return self.read_rows(0, self.shape[0])


class LazyTensors(MutableMapping[str, Any]):
    """name -> value, computed from its RowSource on every access (nothing is kept)."""

    def __init__(self) -> None:
        self._items: dict[str, RowSource | Any] = {}

    def add(self, name: str, source: RowSource) -> None:
        self._items[name] = source

    def __getitem__(self, name: str) -> Any:
        v = self._items[name]
        return v.read() if isinstance(v, RowSource) else v

    def __setitem__(self, name: str, value: Any) -> None:
        self._items[name] = value

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __contains__(self, name: object) -> bool:
        # Mapping's default would read the tensor to find out.
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def source(self, name: str) -> RowSource | Any:
        return self._items[name]


def tensor_shape(tensors: Mapping[str, Any], name: str) -> tuple[int, ...]:
    """The shape of a tensor without reading it (when the mapping is lazy)."""
    v = tensors.source(name) if isinstance(tensors, LazyTensors) else tensors[name]
    return tuple(v.shape) if isinstance(v, RowSource) else tuple(np.shape(v))


def tensor_rows(tensors: Mapping[str, Any], name: str, a: int, b: int) -> Any:
    """Rows [a, b) of a tensor, reading only those from a lazy source."""
    v = tensors.source(name) if isinstance(tensors, LazyTensors) else tensors[name]
    if isinstance(v, RowSource):
        return v.read_rows(a, b)
    if isinstance(v, tuple):  # (codes, scales, mins) of a source-quantised tensor
        return tuple(None if x is None else x[a:b] for x in v)
    return v[a:b]


def pread_exact(fd: int, buf: np.ndarray, offset: int, short: str) -> None:
    """Fills buf with the file's bytes from offset on; a file that ends first raises
    RuntimeError(short). One read returns at most 2 GiB on Linux, so it loops."""
    view, done = memoryview(buf).cast("B"), 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise RuntimeError(short)
        done += n


def to_float32(arr: np.ndarray, bf16: bool) -> np.ndarray:
    """Stored values as float32; bf16: uint16 bits, the top half of a float32 (numpy has no bfloat16)."""
    if bf16:
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(arr, dtype=np.float32)
