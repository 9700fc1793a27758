"""`edgelut info FILE`: what a model file holds, and how many bits each weight costs."""

from __future__ import annotations

import argparse

from edgelut.cli import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe an edgelut model file")
    p.add_argument("file", metavar="FILE", help="a model file, or the name of a pulled model")
    p.add_argument("--tensors", action="store_true", help="list every tensor, not one line per kind")
    p.add_argument("--no-verify", action="store_true", help="skip the CRC check")
    p.set_defaults(func=run)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def _import_line(imp: dict) -> str:
    """One line on a trained low-bit import: format, bits, groups, what is exact."""
    group = imp.get("group_size")
    groups = "one group per row" if isinstance(group, int) and group <= 0 else f"groups of {group}"
    kind = imp.get("format")
    if kind == "gguf-ternary":
        types = ", ".join(f"{n} {t}" for t, n in (imp.get("types") or {}).items())
        exact, total = imp.get("exact_layers"), imp.get("layers")
        return f"ternary GGUF ({types}), {groups}, {exact}/{total} matrices ternary, imported exactly"
    if kind == "bitnet":
        groups = f"ternary, one scale per tensor ({imp.get('linear_class')})"
    if kind == "gptq":
        groups += f" ({'sym' if imp.get('sym') else 'asym'}{', act-order' if imp.get('desc_act') else ''})"
    line = (
        f"{kind} {imp.get('bits')}-bit, {groups}, {imp.get('exact_layers')}/{imp.get('layers')} layers exact"
    )
    if imp.get("permuted_layers"):
        line += f", {imp['permuted_layers']} with columns reordered"
    if imp.get("rounded_scales"):
        line += f", {imp['rounded_scales']} per-tensor scales rounded to fp16"
    if imp.get("rounded_mins"):
        line += f", {imp['rounded_mins']} of {imp.get('groups')} group mins rounded to fp16"
    if imp.get("requantised"):
        line += f", {len(imp['requantised'])} re-quantised"
    return line


def run(args: argparse.Namespace) -> int:
    import os
    import re

    from edgelut.models.modelfile import read_model_file

    if not os.path.exists(args.file):
        from edgelut.registry import known_names
        from edgelut.store import cached_file

        if args.file.lower() not in known_names():
            raise UserError(f"{args.file} does not exist")
        path = cached_file(args.file.lower())
        if path is None:
            raise UserError(
                f"{args.file} is not pulled yet; `edgelut pull {args.file}` downloads and converts it"
            )
        args.file = str(path)
    # The same reader and checks as `edgelut run` (csrc/io/model_file.cc), and the tensor
    # set the engine binds: a file info describes is one the engine would open.
    f = read_model_file(args.file, verify_crc=not args.no_verify)
    f.check_tensor_set()
    c = f.config
    entries = list(f.entries.values())
    n_params = sum(e.n_weights for e in entries)
    tensor_bytes = sum(e.nbytes for e in entries)
    print(f"file:          {f.path} ({_size(f.file_size)}, format version {f.format_version})")
    print(f"architecture:  {c.architecture}  {c.name}".rstrip())
    print(
        f"shape:         {c.n_layers} layers, hidden {c.hidden_size}, ffn {c.intermediate_size}, "
        f"heads {c.n_heads}/{c.n_kv_heads} x {c.head_dim}, vocab {c.vocab_size}, context {c.context_length}"
    )
    print(f"parameters:    {n_params / 1e6:.1f} M")
    print(
        f"bits/weight:   {8 * tensor_bytes / n_params:.3f} (all tensors), "
        f"{8 * f.file_size / n_params:.3f} (whole file)"
    )
    rec = f.recipe  # a JSON object: the reader refuses anything else
    target = rec.get("target") if isinstance(rec.get("target"), dict) else None
    if target:
        # Widths chosen per tensor (`quantize --target-size/--target-bpw`): the overrides are one per
        # tensor, so show the goal and the mix; --tensors lists each tensor's choice.
        goal = (
            f"{target['target_bpw']} bits/weight"
            if "target_bpw" in target
            else f"{_size(float(target.get('target_size', 0)))} file"
        )
        mix = ", ".join(f"{k} x{v}" for k, v in sorted((target.get("specs") or {}).items()))
        print(f"recipe:        method {rec.get('method')}; widths chosen for a {goal} (achieved above)")
        print(f"               {mix}")
    elif rec:
        print(
            f"recipe:        method {rec.get('method')}, {rec.get('qtype')} g{rec.get('group_size')}"
            f"{' asym' if rec.get('asym') else ''}"
            f"{' two-level k' + str(rec['super_block']) if rec.get('super_block') else ''}"
            f"; overrides {rec.get('overrides') or 'none'}"
        )
    imp = rec.get("import") if rec else None
    if isinstance(imp, dict):
        print(f"import:        {_import_line(imp)}")
    if isinstance(rec.get("imatrix"), dict):
        im = rec["imatrix"]
        print(
            f"imatrix:       {im.get('entries')} tensors, {im.get('chunks')} chunks of {im.get('datasets')}"[
                :200
            ]
        )
    if f.shard.world_size > 1:
        print(f"shard:         {f.shard.rank + 1} of {f.shard.world_size}")
    # Per tensor (or per tensor kind: blk.N. folded away).
    rows: dict[str, list] = {}
    for e in entries:
        key = e.name if args.tensors else re.sub(r"^blk\.\d+\.", "blk.*.", e.name)
        fmt = e.qtype
        if e.packed:
            fmt = f"{e.qtype} g{e.group_size}{' asym' if e.asym else ''}"
            fmt += f" k{e.super_block}" if e.super_block else ""  # two-level scales
        r = rows.setdefault(key, [fmt, 0, 0, 0])
        if fmt not in r[0].split(" | "):  # a kind whose tensors differ (chosen widths): list each type
            r[0] += " | " + fmt
        r[1] += 1
        r[2] += e.n_weights
        r[3] += e.nbytes
    width = max(len(k) for k in rows)
    tw = max(18, *(len(r[0]) for r in rows.values()))
    print(f"\n{'tensor':<{width}}  {'type':<{tw}} {'count':>5} {'weights':>12} {'bytes':>10} {'bits/w':>7}")
    for key, (fmt, count, n, nb) in rows.items():
        print(f"{key:<{width}}  {fmt:<{tw}} {count:>5} {n:>12,} {_size(nb):>10} {8 * nb / n:>7.3f}")
    return 0
