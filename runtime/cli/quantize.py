"""`edgelut quantize SRC -o OUT`: import a model, quantise it per recipe, write a model file."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgelut.cli import UserError

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
    calib_ids = None
    if args.method == "gptq" or args.calib:
        from edgelut.quantize.calibrate import calibration_ids

        # The user's files replace the built-in set (joined in the order given).
        text = "\n".join(Path(c).read_text(encoding="utf-8") for c in args.calib) if args.calib else None
        seq = CALIB_SEQ_LEN
        n_seqs = max(1, args.calib_tokens // seq)
        calib_ids = calibration_ids(model.tokenizer.tokenizer_json, text, seq_len=seq, n_seqs=n_seqs)
    path = convert(
        model, out, recipe, calib_ids=calib_ids, float_type=args.float_type, progress=not args.quiet
    )
    print(path)
    return 0
