"""`edgelut keygen -o NAME`: a CURVE key pair for a device of a tensor-parallel group.

Writes NAME.key (public and secret key, mode 0600: keep it on the device) and
NAME.pub (the public key: give a worker's to the coordinator's --allowed-keys
file, and the coordinator's to each worker's --server-key).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "keygen", help="make a CURVE key pair for tensor-parallel devices", description=__doc__
    )
    p.add_argument("-o", "--output", required=True, metavar="NAME", help="writes NAME.key and NAME.pub")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgelut.distributed.keys import generate_keypair, write_keypair

    pair = generate_keypair()
    key, pub = write_keypair(args.output, pair, force=args.force)
    print(f"wrote {key} (secret, mode 0600) and {pub}")
    print(f"public key: {pair.public}")
    return 0
