"""Importers: one abstract interface, one file per source format, one entry point.

``load_model(source)`` picks the importer: ``hf:org/name`` goes to the Hugging
Face hub, a directory or file is offered to each registered importer in turn
(``can_load`` looks at suffixes and magic bytes, never at the whole file).
Another format (e.g. edgelut's own quantised model file, loaded back as
dequantised weights) plugs in with ``@register_importer("name")``.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from pathlib import Path

from edgelut.models.config import ImportedModel


class ModelNotFoundError(FileNotFoundError, RuntimeError):
    """A model path that does not exist (catchable as FileNotFoundError or RuntimeError)."""


class Importer(abc.ABC):
    """Turns one source format into an :class:`ImportedModel`."""

    format_name: str = ""

    @classmethod
    @abc.abstractmethod
    def can_load(cls, path: Path) -> bool:
        """Cheap check (suffix, magic, directory contents); must not raise."""

    @abc.abstractmethod
    def load(self, path: Path) -> ImportedModel:
        """Read the whole model; raises ValueError/RuntimeError naming the path."""


# Source format name -> importer class, in registration order (the probe order).
IMPORTERS: dict[str, type[Importer]] = {}


def register_importer(name: str) -> Callable[[type[Importer]], type[Importer]]:
    def wrap(cls: type[Importer]) -> type[Importer]:
        cls.format_name = name
        IMPORTERS[name] = cls
        return cls

    return wrap


def _register_builtin() -> None:
    # Imported for their @register_importer side effect.
    from edgelut.models.importers import elut, gguf, huggingface, onnx  # noqa: F401


def resolve_hub(repo_id: str) -> Path:
    """Download (or reuse the cached copy of) a Hugging Face hub repository."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise RuntimeError(
            f"loading hf:{repo_id} needs huggingface_hub; install it with `pip install edgelut[hub]`"
        ) from e
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt"]
    try:
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=patterns))
    except Exception as e:  # the hub raises many types; one line for the user
        raise RuntimeError(f"could not download hf:{repo_id}: {e}") from e


def find_importer(path: Path, fmt: str | None = None) -> Importer:
    _register_builtin()
    if fmt is not None:
        if fmt not in IMPORTERS:
            raise ValueError(f"unknown source format {fmt!r}; known: {', '.join(IMPORTERS)}")
        return IMPORTERS[fmt]()
    for cls in IMPORTERS.values():
        if cls.can_load(path):
            return cls()
    raise ValueError(
        f"{path}: not a model edgelut can import (expected a .gguf file, a Hugging Face directory "
        f"with config.json and *.safetensors, an .onnx file, or hf:org/name)"
    )


def load_model(source: str | os.PathLike[str], fmt: str | None = None) -> ImportedModel:
    """Import a model from a GGUF file, a Hugging Face directory, an ONNX export or ``hf:org/name``."""
    text = os.fspath(source)
    if text.startswith("hf:"):
        path = resolve_hub(text[3:])
        fmt = fmt or "huggingface"
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"{path}: no such file or directory")
    model = find_importer(path, fmt).load(path)
    model.source = text
    return model


__all__ = [
    "IMPORTERS",
    "Importer",
    "ModelNotFoundError",
    "find_importer",
    "load_model",
    "register_importer",
    "resolve_hub",
]
