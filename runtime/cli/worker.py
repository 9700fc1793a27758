"""`edgelut worker MODEL --connect tcp://HOST:PORT --rank K --shards N`: serve one
device's slice of a model to a coordinator.

The worker dials out (it needs no listening port, so a phone behind NAT can
join), proves its key (CURVE) and says which model and shard it holds; the
coordinator refuses a mismatch. It then runs every eval on its slice until the
coordinator closes the group, and exits with a clear message if the
coordinator vanishes (with --rejoin it connects again instead, so a device
can stay in service across coordinator restarts).
"""

from __future__ import annotations

import argparse
import sys
import time

from edgelut.cli.common import parse_size, resolve_model
from edgelut.cli.distributed_args import add_link_args, checked
from edgelut.distributed.options import DistributedOptions


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker", help="serve one device's slice of a model to a coordinator", description=__doc__
    )
    p.add_argument("model", help="the model (name or file) the coordinator runs")
    p.add_argument(
        "--connect", required=True, metavar="URL", help="the coordinator, e.g. tcp://192.168.1.10:5555"
    )
    p.add_argument("--rank", type=int, required=True, help="this device's place in the group, 1..N-1")
    p.add_argument("--shards", type=int, required=True, metavar="N", help="devices in the group")
    p.add_argument(
        "--server-key", default="", metavar="KEY|FILE", help="the coordinator's public key (or .pub)"
    )
    p.add_argument("-t", "--threads", type=int, default=0, help="threads (0 = all cores)")
    p.add_argument(
        "-c", "--ctx", type=int, default=2048, help="context length (must equal the coordinator's)"
    )
    p.add_argument("--kv-type", default="f16", choices=("f16", "f32", "q8"), help="KV cache storage")
    p.add_argument(
        "--memory-budget",
        type=parse_size,
        default=0,
        metavar="SIZE",
        help="page this device's layers to stay within SIZE (a shard file from edgelut shard); 0 = no paging",
    )
    p.add_argument(
        "--rejoin",
        action="store_true",
        help="keep serving: when the coordinator closes or is lost, connect again (not if refused)",
    )
    add_link_args(p.add_argument_group("link"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgelut.distributed.group import run_worker

    opts = checked(
        DistributedOptions(
            connect=args.connect,
            shards=args.shards,
            rank=args.rank,
            key=args.key,
            server_key=args.server_key,
            insecure=args.insecure,
            timeout=args.timeout,
            wait=args.wait,
        )
    )
    path = resolve_model(args.model)
    kw = {"n_ctx": args.ctx, "n_threads": args.threads, "kv_type": args.kv_type}
    if args.memory_budget:
        # Embeddings read per token and no lm_head chunks: a worker's budget is its layers.
        kw.update(budget_bytes=args.memory_budget, page_output=True)
    while True:
        print(
            f"edgelut worker: rank {args.rank} of {args.shards}, connecting to {args.connect}",
            file=sys.stderr,
        )
        try:
            reason = run_worker(str(path), opts, kw)
            print(f"edgelut worker: done: {reason or 'the coordinator closed the group'}", file=sys.stderr)
            if not args.rejoin:
                return 0
        except ConnectionError as e:
            # A refusal will not change by asking again; a lost coordinator may come back.
            if not args.rejoin or "refused" in str(e):
                raise
            print(f"edgelut worker: {e}; joining again", file=sys.stderr)
        time.sleep(1.0)
