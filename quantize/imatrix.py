"""Importance matrix: the mean squared input activation of every linear layer, per input channel.

llama.cpp's idea (``llama-imatrix``): the output error of y = x W^T under a
weight error D is sum_k E[x_k^2] * ||D[:, k]||^2 when the inputs are
uncorrelated, so weighting the clip/scale search by E[x_k^2] makes it minimise
the layer's expected output error instead of the weight error.

Collection runs the numpy calibration runner (quantize/calibrate.py) on the
*float* model with a statistic that keeps only sums of squares (the diagonal
of X^T X, K values a layer instead of K^2), so the statistics of every layer
are those of the unquantised model and do not depend on the recipe that later
uses them. The C++ engine would be faster, but it runs quantised weights and
has no hook at every linear input; the numpy runner already stops there.

The file is llama.cpp's GGUF imatrix layout (``general.type = imatrix``, a
``NAME.in_sum2`` f32 tensor of sums of squares and a ``NAME.counts`` tensor of
the token count per tensor), so a file from ``llama-imatrix`` is accepted as it
is and ours can be given to ``llama-quantize``. llama.cpp's older ``.dat``
layout is read too.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgelut.models.config import ImportedModel
from edgelut.models.lazy import tensor_shape

__all__ = [
    "ImportanceMatrix",
    "collect_imatrix",
    "imatrix_from_text",
    "importance_for",
    "load_imatrix",
    "save_imatrix",
]


@dataclass
class ImportanceMatrix:
    """name -> (sum of x_k^2 over tokens (K,), token count); ``mean(name)`` is E[x_k^2]."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunks: int = 0
    chunk_size: int = 0
    rotation: int = -1  # the --rotate seed of the model it was collected on, -1 for none (quantize/rotate.py)

    def names(self) -> list[str]:
        return sorted(self.sums)

    def mean(self, name: str) -> np.ndarray | None:
        s = self.sums.get(name)
        if s is None:
            return None
        return (s / max(self.counts.get(name, 1.0), 1.0)).astype(np.float32)

    def check_against(self, model: ImportedModel) -> None:
        """Raises ValueError when an entry names no matrix of the model or has the wrong width.

        An ``output.weight`` entry for a model with a tied head is moved to ``token_embd.weight``.
        """
        if not self.sums:
            raise ValueError("imatrix holds no tensors")
        head, embd = "output.weight", "token_embd.weight"
        if head in self.sums and head not in model.tensors and embd not in self.sums:
            # A tied head is token_embd; llama.cpp may name its input either way.
            self.sums[embd], self.counts[embd] = self.sums.pop(head), self.counts.pop(head)
        matched = 0
        for name in self.names():
            if name not in model.tensors:
                raise ValueError(f"imatrix names tensor {name!r}, which the model does not have")
            shape = tensor_shape(model.tensors, name)
            if len(shape) != 2 or shape[1] != self.sums[name].size:
                raise ValueError(
                    f"imatrix entry {name!r} has {self.sums[name].size} values, the model's tensor "
                    f"has shape {tuple(shape)}"
                )
            matched += 1
        if not matched:
            raise ValueError("imatrix names none of the model's tensors")


def collect_imatrix(
    model: ImportedModel,
    ids: np.ndarray,
    *,
    datasets: Iterable[str] = (),
    progress: bool = False,
    rotation: int = -1,
) -> ImportanceMatrix:
    """Runs the float model on ids (S, T) and sums the squared input of every linear layer.

    Q/K/V (and gate/up) read one input and get the same statistics, as in llama.cpp.
    For a tied head the head's input is stored under ``token_embd.weight``.
    """
    from tqdm import tqdm

    from edgelut.quantize.calibrate import run_calibrated

    ids = np.asarray(ids, dtype=np.int64)
    im = ImportanceMatrix(
        datasets=list(datasets), chunks=int(ids.shape[0]), chunk_size=int(ids.shape[-1]), rotation=rotation
    )
    tokens = float(ids.size)

    def sum_squares(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
        return np.einsum("tk,tk->k", x, x)

    def record(name: str, w: np.ndarray | None, s: np.ndarray | None) -> np.ndarray | None:
        if s is not None:
            im.sums[name] = np.asarray(s, dtype=np.float32)
            im.counts[name] = tokens
        return w

    bar = tqdm(total=model.config.n_layers, desc="imatrix", unit="layer", disable=not progress)
    for _ in run_calibrated(model, ids, record, sum_squares, head_too=True):
        bar.update(1)
    bar.close()
    return im


def imatrix_from_text(
    model: ImportedModel,
    text: str | None = None,
    *,
    ctx: int = 512,
    chunks: int = 8,
    datasets: Iterable[str] = ("builtin",),
    progress: bool = False,
    rotation: int = -1,
) -> ImportanceMatrix:
    """The importance matrix of ``chunks`` sequences of ``ctx`` tokens spread over a text
    (default: the built-in calibration text), as `edgelut imatrix` and registry conversions make it."""
    from edgelut.quantize.calibrate import calibration_ids

    ids = calibration_ids(model.tokenizer.tokenizer_json, text, seq_len=ctx, n_seqs=chunks)
    return collect_imatrix(model, ids, datasets=datasets, progress=progress, rotation=rotation)


def save_imatrix(path: str | os.PathLike[str], im: ImportanceMatrix) -> Path:
    """Writes llama.cpp's GGUF imatrix layout (written to a temporary name, then renamed)."""
    import gguf

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), "imatrix")
    writer.add_string("general.type", "imatrix")
    writer.add_array("imatrix.datasets", list(im.datasets) or ["unknown"])
    writer.add_uint32("imatrix.chunk_count", int(im.chunks))
    writer.add_uint32("imatrix.chunk_size", int(im.chunk_size))
    if im.rotation >= 0:
        writer.add_int32("imatrix.edgelut.rotation", int(im.rotation))
    for name in im.names():
        writer.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(im.sums[name], dtype=np.float32)[None, :])
        writer.add_tensor(f"{name}.counts", np.array([[im.counts[name]]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def _field_value(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def _load_gguf(path: Path) -> ImportanceMatrix:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # the gguf package raises ValueError, struct.error, IndexError...
        raise ValueError(f"{path}: not a readable GGUF imatrix ({type(e).__name__}: {e})") from e
    kind = _field_value(reader, "general.type")
    if kind != "imatrix":
        raise ValueError(f"{path}: a GGUF file but not an imatrix (general.type is {kind!r})")
    im = ImportanceMatrix(
        datasets=list(_field_value(reader, "imatrix.datasets") or []),
        chunks=int(_field_value(reader, "imatrix.chunk_count") or 0),
        chunk_size=int(_field_value(reader, "imatrix.chunk_size") or 0),
    )
    rotation = _field_value(reader, "imatrix.edgelut.rotation")
    im.rotation = -1 if rotation is None else int(rotation)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        data = np.asarray(t.data, dtype=np.float32).reshape(-1)
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = data
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = data
    for name, s in sums.items():
        c = counts.get(name)
        if c is None or c.size < 1:
            raise ValueError(f"{path}: imatrix entry {name!r} has no counts")
        if c.size > 1:
            raise ValueError(f"{path}: imatrix entry {name!r} is per expert (MoE); edgelut has no MoE models")
        if not np.all(np.isfinite(s)) or np.any(s < 0):
            raise ValueError(f"{path}: imatrix entry {name!r} has negative or non-finite sums")
        im.sums[name] = s.copy()
        im.counts[name] = float(c[0])
    return im


def _load_dat(path: Path) -> ImportanceMatrix:
    """llama.cpp's legacy layout: n, then per entry name, ncall, nval, nval floats (mean * ncall)."""
    data = path.read_bytes()
    at = 0

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal at
        size = struct.calcsize(fmt)
        if at + size > len(data):
            raise ValueError(f"{path}: imatrix .dat file is truncated at byte {at}")
        out = struct.unpack_from(fmt, data, at)
        at += size
        return out

    (n,) = take("<i")
    if not 0 < n < 1 << 20:
        raise ValueError(f"{path}: not an imatrix .dat file (entry count {n})")
    im = ImportanceMatrix()
    for _ in range(n):
        (length,) = take("<i")
        if not 0 < length < 4096:
            raise ValueError(f"{path}: not an imatrix .dat file (name length {length})")
        name = take(f"<{length}s")[0].decode("utf-8", "replace")
        ncall, nval = take("<ii")
        if nval <= 0:
            raise ValueError(f"{path}: imatrix entry {name!r} has {nval} values")
        values = np.array(take(f"<{nval}f"), dtype=np.float32)
        # The stored values are mean * ncall: any common factor is harmless, the count keeps means exact.
        im.sums[name] = values
        im.counts[name] = float(max(ncall, 1))
    return im


def load_imatrix(path: str | os.PathLike[str]) -> ImportanceMatrix:
    """Reads an imatrix file (edgelut's or llama.cpp's, GGUF or legacy .dat); ValueError on a bad one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such imatrix file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    im = _load_gguf(path) if magic == b"GGUF" else _load_dat(path)
    if not im.sums:
        raise ValueError(f"{path}: imatrix holds no tensors")
    return im


def importance_for(im: ImportanceMatrix | None, name: str) -> np.ndarray | None:
    """E[x_k^2] of a tensor's inputs, or None (no imatrix, or no entry for it)."""
    return None if im is None else im.mean(name)
