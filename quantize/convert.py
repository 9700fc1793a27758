"""ImportedModel -> quantised tensors (per recipe) -> model file.

Per weight matrix the recipe gives a spec (type, group, symmetry, or float).
The quantiser is chosen in this order:

1. float spec: kept as float (written as f32 or f16);
2. lossless: the source held the tensor as Q4_0/Q4_1 (``source_codes``) and the
   spec is q4, group 32, asymmetric -> the source codes/scales/mins are packed as they are;
   a trained low-bit import (GPTQ/AWQ/BitNet, ``source_specs``) fixes the spec to the
   one its codes are exact in, whatever the recipe, and is packed the same way;
3. ternary spec ("tq") with method rtn/ternary, symmetric -> absmean (BitNet b1.58);
4. method gptq with calibration -> GPTQ;
5. otherwise RTN with clip search, weighted by diag(X^T X) when calibrated, else by
   the importance matrix (``--imatrix``, quantize/imatrix.py) when one is given.

Token embeddings are always RTN (rows are looked up, not multiplied), without the
least-squares refit; an imatrix entry for them (a tied head's input) weights their search.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgelut.kernels import PLANES, PackedMatrix, from_buffer, pack
from edgelut.models.config import ImportedModel
from edgelut.models.lazy import tensor_rows, tensor_shape
from edgelut.quantize.imatrix import ImportanceMatrix, importance_for
from edgelut.quantize.recipe import Recipe, TensorSpec

__all__ = ["convert", "join_row_blocks", "load_source", "quantize_model", "quantize_rows", "quantize_tensor"]


def load_source(source: str) -> ImportedModel:
    """Loads a model with the importers (GGUF, safetensors, ONNX, hf:org/name)."""
    try:
        from edgelut.models.importers import load_model
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("edgelut.models.importers"):
            raise RuntimeError("the model importers (edgelut.models.importers) are not installed") from e
        raise
    return load_model(source)


def quantize_tensor(
    name: str,
    w: np.ndarray,
    spec: TensorSpec,
    method: str,
    *,
    h: np.ndarray | None = None,
    source_codes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    act_order: bool = False,
    factor: Any = None,
    importance: np.ndarray | None = None,
    source_spec: tuple[str, int, bool] | None = None,
) -> PackedMatrix | np.ndarray:
    """One weight matrix -> PackedMatrix (or the float array for a float spec).

    ``factor`` (a ``GPTQFactor`` of ``h``) saves re-factorising a Hessian shared by several tensors.
    ``importance`` (K,) weights RTN's search when there is no Hessian (an imatrix entry).
    """
    from edgelut.quantize.gptq import quantize_gptq, quantize_gptq_two_level
    from edgelut.quantize.rtn import quantize_rtn
    from edgelut.quantize.ternary import quantize_ternary
    from edgelut.quantize.twolevel import quantize_two_level

    if spec.is_float:
        return np.asarray(w, dtype=np.float32)
    qt, g, asym = spec.qtype, spec.group_size, spec.asym
    if source_codes is not None and _is_lossless(spec, source_spec or Q4_SOURCE):
        codes, scales, mins = source_codes
        return pack(codes, scales, mins, qt, g)
    is_embedding = name == "token_embd.weight"
    if spec.two_level:
        if method == "gptq" and h is not None and not is_embedding:
            tl = quantize_gptq_two_level(w, h, qt, g, spec.super_block, act_order=act_order, factor=factor)
        else:
            if h is not None:  # else the imatrix's importance, if any
                importance = None if is_embedding else np.diag(h)
            tl = quantize_two_level(
                w, qt, g, spec.super_block, importance=importance, refine=0 if is_embedding else None
            )
        return tl.pack()
    if qt == "tq" and not asym and method in ("rtn", "ternary"):
        codes, scales, mins = quantize_ternary(w, g)
    elif method == "gptq" and h is not None and not is_embedding:
        codes, scales, mins = quantize_gptq(w, h, qt, g, asym=asym, act_order=act_order, factor=factor)
    else:
        if h is not None:
            importance = None if is_embedding else np.diag(h)
        # The embedding keeps the plain clip search: on SmolLM2 q4 the refit moved perplexity
        # within noise (33.10 -> 32.90) but turned the greedy answer to the README's chat
        # question from English into French, so the default model would change behaviour
        # for no measured gain (docs/benchmarks-history.md, "Session 3: the merged defaults").
        refine = 0 if is_embedding else None
        codes, scales, mins = quantize_rtn(w, qt, g, asym=asym, importance=importance, refine=refine)
    return pack(codes, scales, mins, qt, g)


# The spec Q4_0/Q4_1 GGUF codes are exact in.
Q4_SOURCE = ("q4", 32, True)


def _is_lossless(spec: TensorSpec, exact_in: tuple[str, int, bool]) -> bool:
    """Whether a source tensor's codes are packed as they are: the spec they are exact in
    (Q4_0/Q4_1: q4 g32 asym; a trained low-bit import: its own), one-level fp16 group scales."""
    return (spec.qtype, spec.group_size, spec.asym) == exact_in and spec.super_block == 0


def spec_of(model: ImportedModel, recipe: Recipe, name: str) -> TensorSpec:
    """The recipe's spec, unless the import fixed this tensor's (trained low-bit codes)."""
    fixed = model.source_specs.get(name)
    if fixed is not None:
        return TensorSpec(*fixed)
    return recipe.spec_for(name, tied_head="output.weight" not in model.tensors)


def _dequantized(t: PackedMatrix | np.ndarray) -> np.ndarray:
    return t.dequantize() if isinstance(t, PackedMatrix) else t


# Rows per block of a row-blocked RTN: about this many weights, a multiple of the 64-row tile.
ROW_BLOCK_WEIGHTS = 1 << 22


def _packed_sections(
    rows: int, k: int, qtype: str, group: int, asym: bool, super_block: int
) -> tuple[int, int, int]:
    """Bytes of the codes, scales and mins sections of a packed matrix (csrc/kernels/layout.h)."""
    tiles, groups = -(-rows // 64), -(-k // group)
    codes = tiles * groups * (group // 4) * PLANES[qtype] * 32
    if super_block:  # a byte per group, an fp16 pair per super-block
        supers = -(-groups // (super_block // group))
        return codes, tiles * groups * 64, tiles * supers * 2 * 64 * 2
    return codes, tiles * groups * 64 * 2, (tiles * groups * 64 * 2 if asym else 0)


def join_row_blocks(parts: list[PackedMatrix], n: int, k: int) -> PackedMatrix:
    """Packed row blocks (each a multiple of 64 rows but the last) -> the packed whole matrix.

    The layout is tile-major in each of its three sections (codes, scales, mins;
    with two-level scales: codes, sub-scales, super-block pairs), and every
    section's size is a multiple of 64 bytes, so the whole is the blocks'
    codes, then their scales, then their mins.
    """
    first = parts[0]
    qtype, group, asym, sb = first.qtype, first.group_size, first.asym, first.super_block
    sections: list[list[np.ndarray]] = [[], [], []]
    for p in parts:
        data = np.asarray(p.data).view(np.uint8).reshape(-1)
        c, sc, mn = _packed_sections(p.n, k, qtype, group, asym, sb)
        if data.nbytes != c + sc + mn:
            raise AssertionError(f"packed block of {p.n} rows has {data.nbytes} bytes, expected the layout's")
        sections[0].append(data[:c])
        sections[1].append(data[c : c + sc])
        if mn:
            sections[2].append(data[c + sc :])
    pieces = [x for sec in sections for x in sec]
    total = sum(x.nbytes for x in pieces)
    raw = np.empty(total + 64, dtype=np.uint8)  # the kernels want the buffer 64-byte aligned
    start = -raw.ctypes.data % 64
    whole, at = raw[start : start + total], 0
    for x in pieces:
        whole[at : at + x.nbytes] = x
        at += x.nbytes
    return from_buffer(whole, n, k, qtype, group, asym, sb)


def quantize_rows(
    name: str,
    tensors: Mapping[str, Any],
    spec: TensorSpec,
    method: str,
    source_codes: Mapping[str, Any],
    importance: np.ndarray | None = None,
    source_specs: Mapping[str, tuple[str, int, bool]] | None = None,
    *,
    h: np.ndarray | None = None,
    act_order: bool = False,
    factor: Any = None,
) -> PackedMatrix | np.ndarray:
    """RTN / ternary / lossless / GPTQ (with ``h``) quantisation of one matrix, a block of rows at a time.

    Each row's groups are quantised on their own, and GPTQ carries a row's error
    only along that row, so the blocks give the same bytes as the whole matrix
    at once, in a fraction of the memory (the float matrix of a large embedding
    or head is most of a conversion's peak otherwise).
    """
    n, k = tensor_shape(tensors, name)
    step = max(64, ROW_BLOCK_WEIGHTS // max(k, 1) // 64 * 64)
    exact_in = (source_specs or {}).get(name, Q4_SOURCE)
    codes = source_codes if _is_lossless(spec, exact_in) and name in source_codes else None
    gptq = {"h": h, "act_order": act_order, "factor": factor}
    if spec.is_float or n <= step:
        sc = None if codes is None else codes[name]
        return quantize_tensor(
            name,
            tensors[name],
            spec,
            method,
            source_codes=sc,
            importance=importance,
            source_spec=exact_in,
            **gptq,
        )
    parts = []
    for a in range(0, n, step):
        b = min(n, a + step)
        sc = None if codes is None else tensor_rows(codes, name, a, b)
        rows = tensor_rows(tensors, name, a, b)
        parts.append(
            quantize_tensor(
                name, rows, spec, method, source_codes=sc, importance=importance, source_spec=exact_in, **gptq
            )
        )
    return join_row_blocks(parts, n, k)


def quantize_model(
    model: ImportedModel,
    recipe: Recipe,
    *,
    calib_ids: np.ndarray | None = None,
    progress: bool = True,
    sink: Callable[[str, PackedMatrix | np.ndarray], Any] | None = None,
    imatrix: ImportanceMatrix | None = None,
) -> dict[str, Any]:
    """Every tensor of the model, quantised per recipe (1-D tensors stay float).

    ``imatrix`` weights the RTN search of the tensors it has entries for (not
    used with calibration tokens, whose Hessians carry the same information).

    One tensor is quantised at a time (RTN a block of rows at a time) and
    handed to ``sink`` (e.g. ``TensorSpill.put``), whose results are returned;
    without a sink the quantised tensors themselves are.
    """
    from tqdm import tqdm

    from edgelut.quantize.gptq import gptq_factor

    store = sink or (lambda name, t: t)
    out: dict[str, Any] = {}
    # The calibration runner hands Q/K/V (and gate/up) the same Hessian object: factorise it once,
    # in its own buffer (a Hessian is only read through its factor afterwards), so one K x K
    # matrix is held, not two (2 x 321 MB for Qwen2.5-1.5B's ffn_down).
    shared: dict[str, Any] = {"h": None, "factor": None}

    def factor_of(h: np.ndarray | None) -> Any:
        if h is None or recipe.method != "gptq" or recipe.act_order:
            return None
        if shared["h"] is not h:
            shared["h"], shared["factor"] = h, gptq_factor(h, overwrite=True)
        return shared["factor"]

    matrices = [n for n in model.tensors if len(tensor_shape(model.tensors, n)) == 2]
    total = sum(int(np.prod(tensor_shape(model.tensors, n))) for n in matrices)
    # Progress in weights, not tensors: the first tensor (the embedding) is the largest, so a
    # per-tensor rate would promise a far too long (or short) remainder after one tick.
    bar = tqdm(total=total, desc="quantize", unit="w", unit_scale=True, smoothing=0.1, disable=not progress)

    def calibrated(name: str, w: np.ndarray | None, h: np.ndarray | None) -> np.ndarray | None:
        spec = spec_of(model, recipe, name)
        exact_in = model.source_specs.get(name, Q4_SOURCE)
        lossless = name in model.source_codes and _is_lossless(spec, exact_in)
        uses_factor = not (spec.is_float or lossless or name == "token_embd.weight")
        factor = factor_of(h) if uses_factor else None
        consumed = factor is None and h is not None and shared["h"] is h  # holds a factor now
        if w is None:  # the head: read and quantised a block of rows at a time; nothing uses it after
            t = quantize_rows(
                name,
                model.tensors,
                spec,
                recipe.method,
                model.source_codes,
                None,
                model.source_specs,
                h=None if consumed else h,
                act_order=recipe.act_order,
                factor=factor,
            )
            out[name] = store(name, t)
            bar.update(int(np.prod(tensor_shape(model.tensors, name))))
            return None
        t = quantize_tensor(
            name,
            w,
            spec,
            recipe.method,
            h=None if consumed else h,
            source_codes=model.source_codes.get(name),
            act_order=recipe.act_order,
            factor=factor,
            source_spec=exact_in,
        )
        out[name] = store(name, t)
        bar.update(int(np.prod(w.shape)))
        return _dequantized(t)

    if recipe.method == "gptq" and calib_ids is None:
        raise ValueError("GPTQ needs calibration tokens")
    if calib_ids is not None:
        from edgelut.quantize.calibrate import run_calibrated

        for _ in run_calibrated(model, calib_ids, calibrated):
            pass
    for name in matrices:
        if name not in out:
            spec = spec_of(model, recipe, name)
            imp = importance_for(imatrix, name)
            t = quantize_rows(
                name, model.tensors, spec, recipe.method, model.source_codes, imp, model.source_specs
            )
            out[name] = store(name, t)
            bar.update(int(np.prod(tensor_shape(model.tensors, name))))
    bar.close()
    for name in model.tensors:
        if name not in out:
            out[name] = store(name, np.asarray(model.tensors[name], dtype=np.float32))
    return out


def convert(
    model: ImportedModel,
    out_path: str | os.PathLike[str],
    recipe: Recipe,
    *,
    calib_ids: np.ndarray | None = None,
    float_type: str = "f32",
    progress: bool = True,
    extra_recipe: dict[str, Any] | None = None,
    imatrix: ImportanceMatrix | None = None,
) -> Path:
    """Quantises the model per recipe and writes the model file; returns its path.

    Streams: each tensor goes to a spill file beside ``out_path`` as soon as it
    is quantised, and the model file is written from there one tensor at a
    time, so memory holds one tensor, not the model.
    """
    from edgelut.models.modelfile import write_model_file
    from edgelut.models.spill import TensorSpill

    info = recipe.to_json()
    info["calibration_tokens"] = 0 if calib_ids is None else int(np.size(calib_ids))
    info["source"] = model.source
    if model.import_info:
        info["import"] = model.import_info
    if imatrix is not None:
        info["imatrix"] = {
            "entries": len(imatrix.sums),
            "chunks": imatrix.chunks,
            "datasets": imatrix.datasets,
        }
    info.update(extra_recipe or {})
    with TensorSpill(Path(out_path).resolve().parent) as spill:
        tensors = quantize_model(
            model,
            recipe,
            calib_ids=calib_ids,
            progress=progress,
            sink=lambda name, t: spill.put(name, t, float_type),
            imatrix=imatrix,
        )
        return write_model_file(
            out_path,
            model.config,
            model.tokenizer,
            tensors,
            recipe=info,
            float_type=float_type,
            progress=progress,
        )
