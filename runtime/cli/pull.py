"""`edgelut pull [NAME]`: download a model into the cache and print its path."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from edgelut.cache import DEFAULT_MODEL

    p = sub.add_parser("pull", help="download a model into the cache (~/.cache/edgelut or $EDGELUT_CACHE)")
    p.add_argument(
        "name",
        nargs="?",
        default=DEFAULT_MODEL,
        help=f"a model name or hf:org/name (default {DEFAULT_MODEL})",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgelut.cache import pull

    print(pull(args.name))
    return 0
