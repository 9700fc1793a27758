"""ImportedModel -> quantised tensors (per recipe) -> model file.

Per weight matrix the recipe gives a spec (type, group, symmetry, or float).
The quantiser is chosen in this order:

1. float spec: kept as float (written as f32 or f16);
2. lossless: the source held the tensor as Q4_0/Q4_1 (``source_codes``) and the
   spec is q4, group 32, asymmetric -> the source codes/scales/mins are packed as they are;
3. ternary spec ("tq") with method rtn/ternary, symmetric -> absmean (BitNet b1.58);
4. method gptq with calibration -> GPTQ;
5. otherwise RTN with clip search (weighted by diag(X^T X) when calibrated).

Token embeddings are always RTN (rows are looked up, not multiplied), without the
least-squares refit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgelut.kernels import PackedMatrix, pack
from edgelut.models.config import ImportedModel
from edgelut.quantize.recipe import Recipe, TensorSpec

__all__ = ["convert", "load_source", "quantize_model", "quantize_tensor"]


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
) -> PackedMatrix | np.ndarray:
    """One weight matrix -> PackedMatrix (or the float array for a float spec).

    ``factor`` (a ``GPTQFactor`` of ``h``) saves re-factorising a Hessian shared by several tensors.
    """
    from edgelut.quantize.gptq import quantize_gptq
    from edgelut.quantize.rtn import quantize_rtn
    from edgelut.quantize.ternary import quantize_ternary

    if spec.is_float:
        return np.asarray(w, dtype=np.float32)
    qt, g, asym = spec.qtype, spec.group_size, spec.asym
    if source_codes is not None and qt == "q4" and g == 32 and asym:
        codes, scales, mins = source_codes
        return pack(codes, scales, mins, "q4", 32)
    is_embedding = name == "token_embd.weight"
    if qt == "tq" and not asym and method in ("rtn", "ternary"):
        codes, scales, mins = quantize_ternary(w, g)
    elif method == "gptq" and h is not None and not is_embedding:
        codes, scales, mins = quantize_gptq(w, h, qt, g, asym=asym, act_order=act_order, factor=factor)
    else:
        importance = None if h is None or is_embedding else np.diag(h)
        # The embedding keeps the plain clip search: on SmolLM2 q4 the refit moved perplexity
        # within noise (33.10 -> 32.90) but turned the greedy answer to the README's chat
        # question from English into French, so the default model would change behaviour
        # for no measured gain (docs/benchmarks-history.md, "Session 3: the merged defaults").
        refine = 0 if is_embedding else None
        codes, scales, mins = quantize_rtn(w, qt, g, asym=asym, importance=importance, refine=refine)
    return pack(codes, scales, mins, qt, g)


def _dequantized(t: PackedMatrix | np.ndarray) -> np.ndarray:
    return t.dequantize() if isinstance(t, PackedMatrix) else t


def quantize_model(
    model: ImportedModel,
    recipe: Recipe,
    *,
    calib_ids: np.ndarray | None = None,
    progress: bool = True,
) -> dict[str, PackedMatrix | np.ndarray]:
    """Every tensor of the model, quantised per recipe (1-D tensors stay float)."""
    from tqdm import tqdm

    from edgelut.quantize.gptq import gptq_factor

    out: dict[str, PackedMatrix | np.ndarray] = {}
    # The calibration runner hands Q/K/V (and gate/up) the same Hessian object: factorise it once.
    shared: dict[str, Any] = {"h": None, "factor": None}

    def factor_of(h: np.ndarray | None) -> Any:
        if h is None or recipe.method != "gptq" or recipe.act_order:
            return None
        if shared["h"] is not h:
            shared["h"], shared["factor"] = h, gptq_factor(h)
        return shared["factor"]

    def one(name: str, w: np.ndarray, h: np.ndarray | None) -> np.ndarray:
        spec = recipe.spec_for(name)
        lossless = name in model.source_codes and (spec.qtype, spec.group_size, spec.asym) == ("q4", 32, True)
        uses_factor = not (spec.is_float or lossless or name == "token_embd.weight")
        out[name] = quantize_tensor(
            name,
            w,
            spec,
            recipe.method,
            h=h,
            source_codes=model.source_codes.get(name),
            act_order=recipe.act_order,
            factor=factor_of(h) if uses_factor else None,
        )
        return _dequantized(out[name])

    matrices = [n for n, t in model.tensors.items() if np.ndim(t) == 2]
    if recipe.method == "gptq" and calib_ids is None:
        raise ValueError("GPTQ needs calibration tokens")
    if calib_ids is not None:
        from edgelut.quantize.calibrate import run_calibrated

        layers = run_calibrated(model, calib_ids, one)
        bar = tqdm(layers, total=model.config.n_layers, desc="calibrate", unit="layer", disable=not progress)
        for _ in bar:
            pass
    for name in tqdm(matrices, desc="quantize", unit="tensor", disable=not progress):
        if name not in out:
            one(name, model.tensors[name], None)
    for name, t in model.tensors.items():
        if name not in out:
            out[name] = np.asarray(t, dtype=np.float32)
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
) -> Path:
    """Quantises the model per recipe and writes the model file; returns its path."""
    from edgelut.models.modelfile import write_model_file

    tensors = quantize_model(model, recipe, calib_ids=calib_ids, progress=progress)
    info = recipe.to_json()
    info["calibration_tokens"] = 0 if calib_ids is None else int(np.size(calib_ids))
    info["source"] = model.source
    info.update(extra_recipe or {})
    return write_model_file(
        out_path,
        model.config,
        model.tokenizer,
        tensors,
        recipe=info,
        float_type=float_type,
        progress=progress,
    )
