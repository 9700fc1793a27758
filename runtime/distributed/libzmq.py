"""Where the libzmq the C++ transport loads lives: the one pyzmq bundles (built with
libsodium, so CURVE works), else the system's libzmq.so.5."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.lru_cache(maxsize=1)
def libzmq_path() -> str:
    try:
        import zmq
    except ImportError:
        return ""
    root = Path(zmq.__file__).resolve().parent
    # manylinux wheels keep their bundled libraries in pyzmq.libs/ beside the package.
    for d in (root.parent / "pyzmq.libs", root, root / ".libs"):
        found = sorted(d.glob("libzmq*.so*")) if d.is_dir() else []
        if found:
            return str(found[0])
    return ""
