"""`edgelut shard MODEL -o DIR --devices N [--weights 1,1,2]`: one model file per device."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from edgelut.cli import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shard", help="split a model into one file per device (tensor parallelism)")
    p.add_argument(
        "model", metavar="MODEL", help="model file (.elut), a source the importers read, or a model name"
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="directory for the shard files and manifest"
    )
    p.add_argument("--devices", type=int, required=True, metavar="N", help="number of devices, 2..8")
    p.add_argument(
        "--weights",
        metavar="W1,W2,...",
        help="each device's relative speed (e.g. tokens/s from `edgelut bench` on it); default equal",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgelut import store
    from edgelut.shard_file import write_shards
    from edgelut.sharding import MAX_DEVICES, parse_weights

    if not 2 <= args.devices <= MAX_DEVICES:
        raise UserError(f"--devices: must be in 2..{MAX_DEVICES}, got {args.devices}")
    try:
        weights = parse_weights(args.weights, args.devices)
    except ValueError as e:
        raise UserError(str(e)) from None
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UserError(f"-o: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise UserError(f"-o: {out} is a non-empty directory that holds no shards; pick an empty one")
    path = store.resolve(os.fspath(args.model), store.ConvertOptions())
    manifest = write_shards(path, out, args.devices, weights)
    total = manifest["source_bytes"]
    print(f"{manifest['model']}: {args.devices} shards in {out} (model {total / 2**20:.1f} MiB)")
    for s in manifest["shards"]:
        role = "coordinator" if s["lm_head"] else "worker"
        q, kv, f, e = s["q_heads"], s["kv_heads"], s["ffn_columns"], s["embd_columns"]
        print(
            f"  {s['file']}: {role:<11} q heads [{q[0]}, {q[1]}) kv [{kv[0]}, {kv[1]}) ffn [{f[0]}, {f[1]}) "
            f"embd [{e[0]}, {e[1]})  {s['bytes'] / 2**20:.1f} MiB ({s['bytes'] / total:.0%})"
        )
    return 0
