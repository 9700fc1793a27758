"""The converted-model cache: every source becomes one model file, made once.

"One way in": whatever the user names (a registry model, a GGUF file, a
Hugging Face directory, an ONNX export), edgelut converts it once with the
streaming quantiser into ``<cache>/models/`` and from then on loads that model
file, so a source and its cached file are the same model.

- A registry name ``NAME`` becomes ``NAME-<tag>.elut`` (tag = ``q4g32`` for
  4-bit groups of 32, plus ``-r<digest>`` when the registry row adds
  per-tensor overrides or an importance matrix to that width); the downloaded
  wheels and GGUF are removed afterwards unless ``keep_source``.
- A path becomes ``<stem>-<digest>-<tag>.elut``, digest = the first 16 hex
  digits of the SHA-256 of the source's bytes (of every file, with its relative
  path, for a directory). The full hash is computed once per (path, size,
  mtime, inode) and remembered in ``<cache>/sources.json``, so later starts
  cost a ``stat``; an edited source has a new mtime and is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from edgelut import cache
from edgelut.registry import UnknownModelError, known_names, lookup

__all__ = [
    "CachedModel",
    "ConvertOptions",
    "cached_file",
    "cached_models",
    "convert_source",
    "is_model_file",
    "model_file",
    "remove",
    "resolve",
    "source_digest",
]

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ConvertOptions:
    """The settings a conversion depends on (part of the cache key) and how it reports."""

    bits: int = 4
    group_size: int = 32
    overrides: str = ""  # per-tensor overrides, `quantize --recipe` syntax
    imatrix: bool = False  # weight the clip search by an importance matrix of the built-in text
    progress: bool = True
    keep_source: bool = False

    def __post_init__(self) -> None:
        if self.bits not in (1, 2, 3, 4):
            raise ValueError(f"bits must be 1, 2, 3 or 4, got {self.bits}")
        if self.group_size not in (32, 64, 128):
            raise ValueError(f"group size must be 32, 64 or 128, got {self.group_size}")

    @property
    def tag(self) -> str:
        tag = f"q{self.bits}g{self.group_size}"
        if self.overrides or self.imatrix:
            key = hashlib.sha256(f"{self.overrides}|imatrix={self.imatrix}".encode()).hexdigest()
            tag += f"-r{key[:6]}"
        return tag

    def recipe(self):  # -> Recipe (imported lazily: the quantiser pulls numba)
        from edgelut.quantize.recipe import Recipe

        return Recipe(
            method="rtn", qtype=f"q{self.bits}", group_size=self.group_size, overrides=self.overrides
        )


def _models_dir() -> Path:
    return cache.cache_dir() / "models"


def is_model_file(path: Path) -> bool:
    """An edgelut model file (GGUF container with edgelut's version key; reads 64 KiB)."""
    from edgelut.models.importers.gguf import is_edgelut_model_file

    return path.is_file() and is_edgelut_model_file(path)


def convert_source(source: Path | str, out: Path, opts: ConvertOptions) -> Path:
    """Converts a source (path or hf:org/name) into the model file ``out`` (atomically)."""
    from edgelut.quantize.convert import convert, load_source

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    model = load_source(str(source))  # downloads an hf: source first
    if opts.progress:
        print(f"edgelut: converting {source} (once) into {out}", file=sys.stderr, flush=True)
    recipe = opts.recipe()  # a bad override fails here, before the importance matrix's forward pass
    imatrix = None
    if opts.imatrix:
        from edgelut.quantize.imatrix import imatrix_from_text

        imatrix = imatrix_from_text(model, progress=opts.progress)
    try:
        convert(model, tmp, recipe, progress=opts.progress, imatrix=imatrix)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)  # a cut-off conversion never leaves a file under the final name
    return out


def _registry_target(name: str, opts: ConvertOptions | None) -> tuple[Path, ConvertOptions]:
    entry = lookup(name)
    if opts is None:
        opts = ConvertOptions(entry.bits, entry.group_size)
    if (opts.bits, opts.group_size) == (entry.bits, entry.group_size) and not opts.overrides:
        # The row's overrides are tuned for its width; another width gets the plain recipe.
        opts = replace(opts, overrides=entry.recipe, imatrix=opts.imatrix or entry.imatrix)
    return _models_dir() / f"{entry.name}-{opts.tag}.elut", opts


def cached_file(name: str) -> Path | None:
    """A registry model's default model file if it has been pulled, without pulling it."""
    out, _ = _registry_target(name, None)
    return out if out.is_file() else None


def model_file(name: str, opts: ConvertOptions | None = None) -> Path:
    """The model file of a registry model: pulled and converted on first use, then cached."""
    entry = lookup(name)
    out, opts = _registry_target(name, opts)
    if out.is_file():
        return out
    source = cache.pull(entry.name, progress=opts.progress)
    convert_source(source, out, opts)
    if not opts.keep_source:
        cache.drop_source(entry.name)
    return out


def _file_digest(path: Path, h: hashlib._Hash) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)


def source_digest(path: Path) -> str:
    """SHA-256 of a source's content, memoised by (path, size, mtime, inode) in sources.json."""
    path = path.resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stats = [(str(p.relative_to(path)) if p != path else "", p.stat()) for p in files]
    stamp = [[rel, st.st_size, st.st_mtime_ns, st.st_ino] for rel, st in stats]
    index_path = cache.cache_dir() / "sources.json"
    try:
        index = json.loads(index_path.read_text())
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}
    known = index.get(str(path))
    if isinstance(known, dict) and known.get("stamp") == stamp and isinstance(known.get("sha256"), str):
        return known["sha256"]
    h = hashlib.sha256()
    for (rel, _), p in zip(stats, files, strict=True):
        h.update(rel.encode() + b"\0")
        _file_digest(p, h)
    digest = h.hexdigest()
    index[str(path)] = {"stamp": stamp, "sha256": digest}
    index_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_name(f"sources.json.{os.getpid()}")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(index_path)
    return digest


def _stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", path.name.removesuffix(".gguf").removesuffix(".onnx")).lower()


def resolve(model: str, opts: ConvertOptions | None = None) -> Path:
    """The model file for what the user typed: a model file as it is, another source
    (GGUF, HF directory, ONNX, hf:org/name) converted once into the cache, or a registry name."""
    opts = opts or ConvertOptions()
    if model.startswith("hf:"):
        if model[3:].count("/") != 1:
            raise ValueError(f"hf: models are named hf:org/name, got {model!r}")
        key = hashlib.sha256(model.encode()).hexdigest()[:16]
        out = _models_dir() / f"{_stem(Path(model[3:]))}-{key}-{opts.tag}.elut"
        return out if out.is_file() else convert_source(model, out, opts)
    path = Path(os.path.expanduser(model))
    if path.exists():
        if not path.is_dir():
            # A FIFO, device or unreadable path is refused before anything opens it.
            from edgelut.models.gguf_file import check_regular_file

            check_regular_file(path)
        if is_model_file(path) or path.suffix.lower() == ".elut":
            return path  # a damaged .elut gets the reader's own error, not an importer's
        out = _models_dir() / f"{_stem(path)}-{source_digest(path)[:16]}-{opts.tag}.elut"
        return out if out.is_file() else convert_source(path, out, opts)
    if os.sep in model or model.endswith((".gguf", ".elut", ".onnx")):
        from edgelut.models.importers import ModelNotFoundError  # a FileNotFoundError and a RuntimeError

        raise ModelNotFoundError(f"model file {model!r} does not exist")
    return model_file(model, opts)


@dataclass(frozen=True)
class CachedModel:
    """One model file in the cache, for `edgelut list`."""

    name: str
    bits: int
    group_size: int
    size: int
    path: Path


_TAG = re.compile(r"^(?P<name>.+)-q(?P<bits>\d)g(?P<group>\d+)(?:-r[0-9a-f]{6})?$")


def cached_models() -> list[CachedModel]:
    """Every converted model file in the cache, sorted by name."""
    out = []
    folder = _models_dir()
    for p in sorted(folder.glob("*.elut")) if folder.is_dir() else []:
        m = _TAG.match(p.name.removesuffix(".elut"))
        if m:
            out.append(CachedModel(m["name"], int(m["bits"]), int(m["group"]), p.stat().st_size, p))
    return out


def remove(name: str) -> list[Path]:
    """Removes a cached model (every quantisation of it) and any source a pull left; returns what went."""
    gone = []
    for m in cached_models():
        if m.name == name.lower() or m.path.name == name:
            m.path.unlink()
            gone.append(m.path)
    if name.lower() in known_names():
        gone += cache.drop_source(name)
    if not gone:
        listed = ", ".join(sorted({m.name for m in cached_models()})) or "none"
        raise UnknownModelError(f"no cached model {name!r} (cached: {listed}); `edgelut list` shows them")
    return gone
