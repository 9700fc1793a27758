"""`edgelut rm NAME`: remove a cached model (every quantisation of it) and any downloaded source."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rm", help="remove a model from the cache", description=__doc__)
    p.add_argument("name", help="a name from `edgelut list`, or a model file name in the cache")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgelut import store

    for path in store.remove(args.name):
        print(f"removed {path}")
    return 0
