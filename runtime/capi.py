"""Where the C ABI lives (``edgelut.capi``).

The wheel ships ``libedgelut.so`` (the C ABI of ``edgelut.h`` over the same
C++ engine as ``edgelut._core``) and its header. A C program builds with::

    cc app.c -I"$(python -c 'import edgelut.capi as c; print(c.include_dir())')" \\
       "$(python -c 'import edgelut.capi as c; print(c.library_path())')"

Text in and out of the C ABI goes through a tokenizer backend that libedgelut
loads at run time: onnxruntime-genai's C library (``pip install
edgelut[capi]``). ``tokenizer_library()`` finds it; point libedgelut at it with
``EDGELUT_TOKENIZER_LIB`` or the ``tokenizer_lib`` load parameter (and at
ONNX Runtime with ``EDGELUT_ONNXRUNTIME_LIB`` when it is not installed beside it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_SOURCE_INCLUDE = _PACKAGE.parent / "csrc" / "include"


def library_path() -> Path:
    """The path of libedgelut.so; FileNotFoundError when this build has none."""
    path = _PACKAGE / "lib" / "libedgelut.so"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: this build has no C ABI library (rebuild with pip)")
    return path


def include_dir() -> Path:
    """The directory holding edgelut.h."""
    for d in (_PACKAGE / "include", _SOURCE_INCLUDE):
        if (d / "edgelut.h").is_file():
            return d
    raise FileNotFoundError(f"edgelut.h is in neither {_PACKAGE / 'include'} nor {_SOURCE_INCLUDE}")


def tokenizer_library() -> Path | None:
    """onnxruntime-genai's C library (the C ABI's tokenizer backend), or None when not installed."""
    spec = importlib.util.find_spec("onnxruntime_genai")
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        lib = Path(d) / "libonnxruntime-genai.so"
        if lib.is_file():
            return lib
    return None


def onnxruntime_library() -> Path | None:
    """The ONNX Runtime library the tokenizer backend needs (from the onnxruntime wheel), or None.

    libedgelut finds it by itself when the onnxruntime wheel sits beside
    onnxruntime-genai; otherwise set EDGELUT_ONNXRUNTIME_LIB to this path.
    """
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        found = sorted((Path(d) / "capi").glob("libonnxruntime.so*"))
        if found:
            return found[0]
    return None


__all__ = ["include_dir", "library_path", "onnxruntime_library", "tokenizer_library"]
