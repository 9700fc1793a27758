"""`edgelut shard MODEL -o DIR --devices N [--weights 1,1,2] [--split heads|layers|auto]`: one model
file per device, a slice of every layer (heads, tensor parallel) or a range of layers (a pipeline)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from edgelut.cli import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "shard", help="split a model into one file per device (tensor parallel or a layer pipeline)"
    )
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
        help="heads: each device's relative speed (e.g. tokens/s from `edgelut bench` on it); "
        "layers: each device's share of the model's bytes (its memory); default equal",
    )
    p.add_argument(
        "--split",
        choices=("heads", "layers", "auto"),
        default="heads",
        help="heads: a slice of every layer, 2 all-reduces a layer (fast links); layers: a range of whole "
        "layers, ~1 round trip per device a token (slow links); auto: the faster by the latency model, "
        "from --rtt-ms and --token-ms (default heads)",
    )
    p.add_argument("--rtt-ms", type=float, metavar="MS", help="--split auto: the link's round trip (ping)")
    p.add_argument(
        "--token-ms",
        type=float,
        metavar="MS",
        help="--split auto: one device's decode time per token (1000 / tokens/s of `edgelut bench`)",
    )
    p.add_argument(
        "--link-mbit",
        type=float,
        default=0.0,
        metavar="MBIT",
        help="--split auto: link rate (0: not limiting)",
    )
    p.set_defaults(func=run)


def _auto_split(args: argparse.Namespace, path: Path) -> str:
    from edgelut.models.modelfile import read_model_file
    from edgelut.sharding import choose_split

    if args.rtt_ms is None or args.token_ms is None:
        raise UserError(
            "--split auto needs --rtt-ms (the link's round trip) and --token-ms (one device's decode)"
        )
    if not (args.rtt_ms >= 0 and args.token_ms > 0 and args.link_mbit >= 0):
        raise UserError("--rtt-ms and --link-mbit must be >= 0 and --token-ms > 0")
    with read_model_file(path, verify_crc=False) as mf:
        config = mf.config
    split, pred = choose_split(
        config, args.devices, args.token_ms / 1e3, args.rtt_ms / 1e3, args.link_mbit * 1e6 / 8
    )
    print(
        f"--split auto: predicted {pred['heads'] * 1e3:.1f} ms/token by heads, "
        f"{pred['layers'] * 1e3:.1f} by layers: {split}"
    )
    return split


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
    split = _auto_split(args, path) if args.split == "auto" else args.split
    try:
        manifest = write_shards(path, out, args.devices, weights, split=split)
    except ValueError as e:  # a plan the model cannot take (too few layers / heads)
        raise UserError(str(e)) from None
    total = manifest["source_bytes"]
    print(f"{manifest['model']}: {args.devices} shards in {out} (model {total / 2**20:.1f} MiB)")
    for s in manifest["shards"]:
        role = "coordinator" if s["lm_head"] else "worker"
        q, kv, f, e = s["q_heads"], s["kv_heads"], s["ffn_columns"], s["embd_columns"]
        share = f"{s['bytes'] / 2**20:.1f} MiB ({s['bytes'] / total:.0%})"
        if split == "layers":
            span = s["layers"]
            print(f"  {s['file']}: {role:<11} layers [{span[0]}, {span[1]})  {share}")
            continue
        print(
            f"  {s['file']}: {role:<11} q heads [{q[0]}, {q[1]}) kv [{kv[0]}, {kv[1]}) ffn [{f[0]}, {f[1]}) "
            f"embd [{e[0]}, {e[1]})  {s['bytes'] / 2**20:.1f} MiB ({s['bytes'] / total:.0%})"
        )
    return 0
