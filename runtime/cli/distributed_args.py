"""The tensor-parallel flags shared by the coordinator commands (chat, run, bench,
perplexity) and `edgelut worker`, turned into one DistributedOptions."""

from __future__ import annotations

import argparse

from edgelut.cli import UserError
from edgelut.distributed.options import SYNC_MODES, DistributedOptions


def add_link_args(g: argparse._ArgumentGroup) -> None:
    """Flags both ends take."""
    g.add_argument(
        "--key", default="", metavar="NAME.key", help="this device's CURVE key pair (edgelut keygen)"
    )
    g.add_argument("--insecure", action="store_true", help="plain text, no authentication: anyone may join")
    g.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds before a silent device is gone (default 5)",
    )
    g.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for the group to form (default 60)",
    )


def add_coordinator_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tensor parallel (this process coordinates; workers dial in)")
    g.add_argument(
        "--shards", type=int, default=0, metavar="N", help="devices in the group, this one included"
    )
    g.add_argument(
        "--listen", default="", metavar="URL", help="where workers connect, e.g. tcp://0.0.0.0:5555"
    )
    g.add_argument("--allowed-keys", default="", metavar="FILE", help="the workers' public keys, one a line")
    g.add_argument(
        "--sync",
        default="fp32",
        choices=SYNC_MODES,
        help="partial sums: fp32, or int8 blocks of 32 (3.6x fewer bytes)",
    )
    add_link_args(g)


def coordinator_options(args: argparse.Namespace) -> DistributedOptions | None:
    """The options when --listen or --shards was given, else None (a single device)."""
    if not args.listen and not args.shards:
        return None
    if not args.listen or not args.shards:
        raise UserError("a tensor-parallel group needs both --shards N and --listen URL")
    return checked(
        DistributedOptions(
            listen=args.listen,
            shards=args.shards,
            key=args.key,
            allowed_keys=args.allowed_keys,
            insecure=args.insecure,
            timeout=args.timeout,
            wait=args.wait,
            sync=args.sync,
        )
    )


def checked(opts: DistributedOptions) -> DistributedOptions:
    try:
        opts.check()
    except ValueError as e:
        raise UserError(str(e)) from None
    return opts
