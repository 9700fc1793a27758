"""`edgelut list`: the converted models in the cache (name, bits, size, path)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the models in the cache", description=__doc__)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgelut import cache, store

    models = store.cached_models()
    if not models:
        print(f"no models in {cache.cache_dir() / 'models'}; `edgelut pull NAME` adds one")
        return 0
    width = max(len("NAME"), *(len(m.name) for m in models))
    print(f"{'NAME':<{width}}  BITS  GROUP  {'SIZE':>9}  PATH")
    for m in models:
        print(f"{m.name:<{width}}  {m.bits:>4}  {m.group_size:>5}  {m.size / (1 << 20):>6.1f} MiB  {m.path}")
    return 0
