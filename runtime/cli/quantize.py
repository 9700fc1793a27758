"""`edgelut quantize SRC -o OUT`: import a model, quantise it per recipe, write a model file."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgelut.cli import UserError
from edgelut.cli.common import add_rotate_arg

# Calibration: sequences of CALIB_SEQ_LEN tokens, DEFAULT_CALIB_TOKENS in all (measured in
# docs/benchmarks-history.md "GPTQ calibration and recipes").
CALIB_SEQ_LEN = 128
DEFAULT_CALIB_TOKENS = 4096


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantise a model into an edgelut model file")
    p.add_argument(
        "source", metavar="SRC", help="GGUF, HF directory, ONNX, hf:org/name, or a model name (downloaded)"
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="model file to write")
    p.add_argument("--bits", default="4", help="1, 2, 3, 4 or ternary (default 4)")
    p.add_argument(
        "--group-size", type=int, default=32, choices=(32, 64, 128), help="weights per scale (default 32)"
    )
    p.add_argument("--method", default="rtn", choices=("rtn", "gptq", "ternary"))
    sym = p.add_mutually_exclusive_group()
    sym.add_argument(
        "--asym",
        dest="asym",
        action="store_true",
        default=None,
        help="asymmetric groups, scale and offset (default for q1..q4)",
    )
    sym.add_argument(
        "--sym",
        dest="asym",
        action="store_false",
        help="symmetric groups, scale only (default for ternary; no zero level for q1..q4)",
    )
    p.add_argument(
        "--super-block",
        type=int,
        default=None,
        metavar="N",
        help="two-level scales: 4-bit sub-scales per group under fp16 values per N weights "
        "(default 256 for 1-3 bits, 0 = fp16 scale and min per group, the default for 4 bits)",
    )
    p.add_argument("--act-order", action="store_true", help="GPTQ: quantise columns by decreasing activation")
    p.add_argument(
        "--calib",
        metavar="FILE",
        action="append",
        help="calibration text; repeat for several files (default: a built-in English sample plus "
        "Python's pydoc topics)",
    )
    p.add_argument(
        "--calib-tokens",
        type=int,
        default=DEFAULT_CALIB_TOKENS,
        help=f"calibration tokens (default {DEFAULT_CALIB_TOKENS})",
    )
    p.add_argument(
        "--imatrix",
        metavar="FILE",
        help="importance matrix (from `edgelut imatrix` or llama-imatrix, GGUF or .dat) weighting the "
        "RTN clip/scale search",
    )
    add_rotate_arg(
        p,
        "rotate the residual stream by a seeded random Hadamard-based rotation fused into the weights, "
        "plus a block Hadamard before ffn_down (same function, more quantisable weights; unties a tied "
        "head). Default seed 0",
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "--target-size",
        metavar="SIZE",
        help="choose each tensor's width (q1..q4, group size) from measured sensitivity so the file "
        "is at most SIZE (bytes, or 800M / 1.2G in MiB / GiB); --recipe entries stay pinned",
    )
    target.add_argument(
        "--target-bpw",
        type=float,
        metavar="BITS",
        help="as --target-size, for an average of BITS bits per weight over all tensors (as `edgelut info`)",
    )
    p.add_argument(
        "--recipe", metavar="SPEC", help="per-tensor overrides: 'token_embd=q4,ffn_down=+1' or JSON"
    )
    p.add_argument("--no-default-recipe", action="store_true", help="do not apply the per-bit-width defaults")
    p.add_argument("--float-type", default="f32", choices=("f32", "f16"), help="storage of float tensors")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgelut.quantize.convert import convert, load_source
    from edgelut.quantize.recipe import Recipe, qtype_for_bits

    try:
        qtype = qtype_for_bits(args.bits)
        if args.method == "ternary":
            qtype = "tq"
        recipe = Recipe(
            method=args.method,
            qtype=qtype,
            group_size=args.group_size,
            asym=args.asym,
            overrides=args.recipe or {},
            use_defaults=not args.no_default_recipe,
            act_order=args.act_order,
            super_block=args.super_block,
        )
    except ValueError as e:
        raise UserError(f"--recipe/--bits: {e}") from e
    for calib in args.calib or ():
        if not Path(calib).is_file():
            raise UserError(f"--calib: {calib} is not a file")
    if args.imatrix and (args.calib or args.method == "gptq"):
        raise UserError("--imatrix: calibration (--calib, --method gptq) already weights the search; use one")
    if args.calib_tokens < 1:
        raise UserError(f"--calib-tokens: must be at least 1, got {args.calib_tokens}")
    out = Path(args.output)
    if out.is_dir():
        raise UserError(f"-o: {out} is a directory")
    source = args.source
    from edgelut.registry import known_names

    if source.lower() in known_names() and not Path(source).exists():
        from edgelut import cache

        source = str(cache.pull(source, progress=not args.quiet))
    model = load_source(source)
    extra: dict = {}
    if args.rotate is not None:
        from edgelut.quantize.rotate import rotate_model

        try:
            model = rotate_model(model, args.rotate)
        except ValueError as e:
            raise UserError(f"--rotate: {e}") from e
        extra["rotation"] = {"kind": "residual-hadamard", "seed": args.rotate}
    imatrix = None
    if args.imatrix:
        from edgelut.quantize.imatrix import load_imatrix

        try:
            imatrix = load_imatrix(args.imatrix)
            imatrix.check_against(model)
            want = -1 if args.rotate is None else args.rotate
            if imatrix.rotation != want:
                how = "without --rotate" if imatrix.rotation < 0 else f"with --rotate {imatrix.rotation}"
                raise ValueError(f"it was collected {how}; collect it on the model as quantised")
        except ValueError as e:
            raise UserError(f"--imatrix: {e}") from e
    calib_ids = None
    if args.method == "gptq" or args.calib:
        from edgelut.quantize.calibrate import calibration_ids

        # The user's files replace the built-in set (joined in the order given).
        text = "\n".join(Path(c).read_text(encoding="utf-8") for c in args.calib) if args.calib else None
        seq = CALIB_SEQ_LEN
        n_seqs = max(1, args.calib_tokens // seq)
        calib_ids = calibration_ids(model.tokenizer.tokenizer_json, text, seq_len=seq, n_seqs=n_seqs)
    if args.target_size or args.target_bpw is not None:
        path = _convert_to_target(args, model, out, recipe, calib_ids, imatrix, extra)
    else:
        path = convert(
            model,
            out,
            recipe,
            calib_ids=calib_ids,
            float_type=args.float_type,
            progress=not args.quiet,
            extra_recipe=extra,
            imatrix=imatrix,
        )
    print(path)
    return 0


def _convert_to_target(args: argparse.Namespace, model, out: Path, recipe, calib_ids, imatrix, extra) -> Path:  # noqa: ANN001
    """--target-size / --target-bpw: measure each tensor's options once, choose, convert (a size target:
    up to three rounds, each correcting the metadata estimate by the file the last one wrote)."""
    import sys

    import numpy as np

    from edgelut.cli.common import parse_size
    from edgelut.models.lazy import tensor_shape
    from edgelut.models.modelfile import ALIGNMENT
    from edgelut.quantize.allocate import allocate, measure_model
    from edgelut.quantize.convert import convert

    names = list(model.tensors)
    n_weights = sum(int(np.prod(tensor_shape(model.tensors, n))) for n in names)
    if args.target_bpw is not None:
        if not 1.0 <= args.target_bpw <= 32.0:
            raise UserError(f"--target-bpw: must be between 1 and 32, got {args.target_bpw}")
        budget = int(args.target_bpw * n_weights / 8)
        target = {"target_bpw": args.target_bpw}
    else:
        try:
            size = parse_size(args.target_size)
        except argparse.ArgumentTypeError as e:
            raise UserError(f"--target-size: {e}") from e
        if size <= 0:
            raise UserError(f"--target-size: must be positive, got {args.target_size!r}")
        # Everything but the tensors: tokenizer, per-tensor keys and alignment, the recipe.
        tok = model.tokenizer
        overhead = len(tok.tokenizer_json.encode()) + len((tok.chat_template or "").encode())
        overhead += len(names) * (ALIGNMENT // 2 + 300) + 16 * 1024
        budget = size - overhead
        target = {"target_size": size}
    matrices = [n for n in names if len(tensor_shape(model.tensors, n)) == 2]
    fixed = {n: s for n in matrices if (s := recipe.pinned_spec(n)) is not None}

    def note(name: str) -> None:
        if not args.quiet:
            print(f"\rsensitivity: {name:<40}", end="", file=sys.stderr, flush=True)

    try:
        measured = measure_model(
            model, imatrix=imatrix, fixed=fixed, float_type=args.float_type, progress=note
        )
    except ValueError as e:
        raise UserError(f"--target-size/--target-bpw: {e}") from e
    if not args.quiet:
        print(file=sys.stderr)
    path = out
    # A size target counts the file: the tokenizer, keys and alignment are estimated above, then the
    # estimate is corrected by what the written file measured (a re-choice is cheap, the
    # measurements are kept; each round costs one conversion).
    for _round in range(3):
        try:
            alloc = allocate(measured, budget)
        except ValueError as e:
            raise UserError(f"--target-size/--target-bpw: {e}") from e
        extra = {**extra, "target": {**target, **alloc.summary()}}
        path = convert(
            model,
            out,
            alloc.recipe(recipe),
            calib_ids=calib_ids,
            float_type=args.float_type,
            progress=not args.quiet,
            extra_recipe=extra,
            imatrix=imatrix,
        )
        if "target_size" not in target:
            break
        size = path.stat().st_size
        if 0.99 * target["target_size"] <= size <= target["target_size"]:
            break
        budget += target["target_size"] - size - (size > target["target_size"]) * ALIGNMENT
    if "target_size" in target and path.stat().st_size > target["target_size"]:
        wrote = path.stat().st_size
        raise UserError(f"--target-size: wrote {wrote:,} bytes, over the target; try a larger one")
    return path
