"""Per-tensor widths chosen to hit a size: ``edgelut quantize --target-size 800M / --target-bpw 3.2``.

Every weight matrix is quantised (RTN, row blocks, as the converter does) at
each candidate spec (q1..q4 x group size, asymmetric), and two numbers are
kept per (tensor, spec): the stored bytes, read off the packed result (so the
chooser follows whatever scale format the packer writes), and the
sensitivity, the output error the quantisation causes relative to the
layer's output:

    err(t, s) = sum_k E[x_k^2] ||W[:, k] - Q_s(W)[:, k]||^2 / sum_k E[x_k^2] ||W[:, k]||^2

with E[x_k^2] from the importance matrix when one is given (else 1: the
relative weight error). The relative form puts every tensor on one scale
(a noise-to-signal ratio of its output), so a small tensor whose output is
fragile (attn_v, ffn_down with its outlier channels) can outbid a large one
per byte. The choice minimises sum_t err(t, s_t) under the byte budget: each
tensor starts at its cheapest spec and the upgrade with the largest error
drop per extra byte is taken while it fits (a greedy walk of each tensor's
lower convex hull, the Lagrangian solution up to the last step), then any
single upgrade that still fits is taken, best first.

The result is a recipe of full-name overrides, so the converter, the model
file and ``edgelut info --tensors`` need nothing new.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgelut.kernels import PackedMatrix
from edgelut.models.config import ImportedModel
from edgelut.models.lazy import tensor_rows, tensor_shape
from edgelut.quantize.imatrix import ImportanceMatrix, importance_for
from edgelut.quantize.recipe import Recipe, TensorSpec

__all__ = [
    "DEFAULT_CANDIDATES",
    "Allocation",
    "Measurements",
    "allocate",
    "choose_widths",
    "measure_model",
    "measure_tensor",
]

# Two-level scales (4-bit sub-scales under an fp16 pair per 256 weights) are candidates beside the
# fp16-per-group forms: at g32 they cost 0.375 bits of scales per weight instead of 1.0, the
# cheapest way to g32's accuracy below 4 bits (quantize/twolevel.py).
DEFAULT_CANDIDATES: tuple[TensorSpec, ...] = (
    tuple(TensorSpec(q, g, True) for q in ("q2", "q3", "q4") for g in (128, 64, 32))
    + tuple(TensorSpec(q, 32, True, 256) for q in ("q2", "q3", "q4"))
    + (TensorSpec("q1", 32, True),)
)


@dataclass
class Allocation:
    """The chosen spec per tensor, with what the chooser measured for it."""

    specs: dict[str, TensorSpec]
    budget: int  # bytes allowed for all tensors (packed + float)
    tensor_bytes: int  # bytes the choice stores, all tensors
    n_weights: int  # elements of all tensors
    error: float  # sum of relative errors of the choice
    options: dict[str, list[tuple[TensorSpec, int, float]]] = field(default_factory=dict)

    @property
    def bpw(self) -> float:
        return 8.0 * self.tensor_bytes / max(self.n_weights, 1)

    def recipe(self, base: Recipe) -> Recipe:
        overrides = {name: str(spec) for name, spec in self.specs.items()}
        # super_block=0: an override inherits the recipe's super-block unless it names one, and a
        # one-level spec's text names none, so under a q1..q3 base (two-level by default) the
        # measured fp16-per-group forms would be written two-level, with other bytes and errors.
        return Recipe(
            method=base.method,
            qtype=base.qtype,
            group_size=base.group_size,
            asym=base.asym,
            overrides=overrides,
            use_defaults=False,
            act_order=base.act_order,
            super_block=0,
        )

    def summary(self) -> dict[str, object]:
        counts: dict[str, int] = {}
        for spec in self.specs.values():
            counts[str(spec)] = counts.get(str(spec), 0) + 1
        return {
            "budget_bytes": self.budget,
            "tensor_bytes": self.tensor_bytes,
            "bpw": round(self.bpw, 4),
            "relative_error": self.error,
            "specs": counts,
        }


# Rows of a tensor the sensitivity is measured on: every row is quantised on its own, so a sample
# of rows estimates the whole tensor's error; whole 64-row tiles, so the bytes scale exactly.
SAMPLE_ROWS = 1024


def _sample(model: ImportedModel, name: str) -> tuple[np.ndarray, float]:
    """(a sample of whole 64-row tiles of the tensor, its share of the tensor's tiles)."""
    n = tensor_shape(model.tensors, name)[0]
    tiles = -(-n // 64)
    take = min(tiles, SAMPLE_ROWS // 64)
    if take == tiles:
        return np.asarray(model.tensors[name], dtype=np.float32), 1.0
    starts = np.linspace(0, tiles - 1, take).round().astype(np.int64) * 64
    rows = [
        np.asarray(tensor_rows(model.tensors, name, int(s), min(n, int(s) + 64)), np.float32) for s in starts
    ]
    # A sample drawn from a short last tile would not be whole: only full tiles are taken.
    rows = [r for r in rows if r.shape[0] == 64] or rows
    return np.concatenate(rows), len(rows) / tiles


def measure_tensor(
    name: str, model: ImportedModel, spec: TensorSpec, importance: np.ndarray | None
) -> tuple[int, float]:
    """(stored bytes, relative weighted output error) of one tensor at one spec.

    Large tensors are measured on :data:`SAMPLE_ROWS` rows in whole tiles (the bytes scaled to the
    whole tensor); the choice needs errors to a few percent, not the exact figure.
    """
    from edgelut.quantize.convert import quantize_tensor

    w, share = _sample(model, name)
    t = quantize_tensor(name, w, spec, "rtn", importance=importance)
    nbytes = int(np.asarray(t.data).nbytes) if isinstance(t, PackedMatrix) else int(t.nbytes)
    nbytes = int(round(nbytes / share))
    deq = t.dequantize() if isinstance(t, PackedMatrix) else t
    imp = np.ones(w.shape[1], np.float64) if importance is None else np.asarray(importance, np.float64)
    # Column sums of squares, in float64: the relative errors of tensors are compared with each other.
    d = np.einsum("nk,nk->k", (w - deq).astype(np.float64), (w - deq).astype(np.float64))
    s = np.einsum("nk,nk->k", w.astype(np.float64), w.astype(np.float64))
    signal = float(imp @ s)
    return nbytes, float(imp @ d) / signal if signal > 0 else 0.0


def _float_bytes(model: ImportedModel, name: str, float_type: str) -> int:
    return int(np.prod(tensor_shape(model.tensors, name))) * (2 if float_type == "f16" else 4)


def _hull(options: list[tuple[TensorSpec, int, float]]) -> list[tuple[TensorSpec, int, float]]:
    """The options on the lower convex hull of (bytes, error), cheapest first."""
    pts = sorted(options, key=lambda o: (o[1], o[2]))
    kept: list[tuple[TensorSpec, int, float]] = []
    for p in pts:
        if kept and p[2] >= kept[-1][2]:
            continue  # costs at least as much as the last kept and is no better
        while len(kept) >= 2:
            (_, b1, e1), (_, b2, e2) = kept[-2], kept[-1]
            # Drop the middle point when it lies on or above the chord from kept[-2] to p.
            if (e1 - e2) * (p[1] - b1) <= (e1 - p[2]) * (b2 - b1):
                kept.pop()
            else:
                break
        kept.append(p)
    return kept


@dataclass
class Measurements:
    """What the chooser measured: per matrix its options (spec, bytes, error); bytes of the 1-D tensors."""

    options: dict[str, list[tuple[TensorSpec, int, float]]]
    float_bytes: int
    n_weights: int


def measure_model(
    model: ImportedModel,
    *,
    candidates: Sequence[TensorSpec] = DEFAULT_CANDIDATES,
    imatrix: ImportanceMatrix | None = None,
    fixed: Mapping[str, TensorSpec] | None = None,
    float_type: str = "f32",
    progress: Callable[[str], None] | None = None,
) -> Measurements:
    """Quantises every matrix at every candidate (``fixed`` pins a tensor to one spec)."""
    fixed = dict(fixed or {})
    names = list(model.tensors)
    matrices = [n for n in names if len(tensor_shape(model.tensors, n)) == 2]
    n_weights = sum(int(np.prod(tensor_shape(model.tensors, n))) for n in names)
    float_bytes = sum(_float_bytes(model, n, float_type) for n in names if n not in matrices)
    options: dict[str, list[tuple[TensorSpec, int, float]]] = {}
    for name in matrices:
        imp = importance_for(imatrix, name)
        opts = []
        for spec in [fixed[name]] if name in fixed else list(candidates):
            if spec.is_float:
                opts.append((spec, _float_bytes(model, name, spec.qtype), 0.0))
            else:
                nbytes, err = measure_tensor(name, model, spec, imp)
                opts.append((spec, nbytes, err))
        options[name] = opts
        if progress:
            progress(name)
    return Measurements(options, float_bytes, n_weights)


def choose_widths(
    model: ImportedModel,
    budget: int,
    *,
    candidates: Sequence[TensorSpec] = DEFAULT_CANDIDATES,
    imatrix: ImportanceMatrix | None = None,
    fixed: Mapping[str, TensorSpec] | None = None,
    float_type: str = "f32",
    progress: Callable[[str], None] | None = None,
) -> Allocation:
    """Specs for every matrix so that all tensors take at most ``budget`` bytes, least error first.

    ``fixed`` pins some tensors (the user's own overrides); 1-D tensors stay float.
    Raises ValueError when even the cheapest candidates do not fit.
    """
    m = measure_model(
        model, candidates=candidates, imatrix=imatrix, fixed=fixed, float_type=float_type, progress=progress
    )
    return allocate(m, budget)


def allocate(m: Measurements, budget: int) -> Allocation:
    """The least-error choice of :class:`Measurements` within ``budget`` bytes of tensors."""
    options, used, n_weights = m.options, m.float_bytes, m.n_weights
    hulls = {n: _hull(o) for n, o in options.items()}
    choice = {n: 0 for n in hulls}
    used += sum(h[0][1] for h in hulls.values())
    if used > budget:
        raise ValueError(
            f"the target ({budget:,} bytes of tensors) is below the smallest these widths make "
            f"({used:,} bytes)"
        )

    def push(heap: list, name: str) -> None:
        i, h = choice[name], hulls[name]
        if i + 1 < len(h):
            db, de = h[i + 1][1] - h[i][1], h[i][2] - h[i + 1][2]
            heapq.heappush(heap, (-de / max(db, 1), name))

    heap: list[tuple[float, str]] = []
    for n in hulls:
        push(heap, n)
    while heap:
        _, name = heapq.heappop(heap)
        i, h = choice[name], hulls[name]
        step = h[i + 1][1] - h[i][1]
        if used + step <= budget:
            choice[name] = i + 1
            used += step
            push(heap, name)
    # Fill what the hull walk left: any single change to a better option that still fits.
    current = {n: hulls[n][choice[n]] for n in hulls}
    while True:
        best: tuple[float, str, tuple[TensorSpec, int, float]] | None = None
        for n, opts in options.items():
            _, b0, e0 = current[n]
            for o in opts:
                if o[2] < e0 and used + o[1] - b0 <= budget:
                    gain = e0 - o[2]
                    if best is None or gain > best[0]:
                        best = (gain, n, o)
        if best is None:
            break
        _, n, o = best
        used += o[1] - current[n][1]
        current[n] = o
    return Allocation(
        specs={n: c[0] for n, c in current.items()},
        budget=budget,
        tensor_bytes=used,
        n_weights=n_weights,
        error=float(sum(c[2] for c in current.values())),
        options=options,
    )
