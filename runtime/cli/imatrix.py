"""`edgelut imatrix SRC -o OUT`: per-channel mean squared activations of every linear layer."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgelut.cli import UserError
from edgelut.cli.common import add_rotate_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "imatrix",
        help="collect an importance matrix (llama.cpp's GGUF imatrix layout) for `quantize --imatrix`",
    )
    p.add_argument("source", metavar="SRC", help="float or quantised source model (GGUF, HF directory, ...)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="imatrix file to write (.gguf)")
    p.add_argument(
        "--text",
        metavar="FILE",
        action="append",
        help="calibration text; repeat for several files (default: the built-in sample plus Python's "
        "pydoc topics). Use a text other than the one you measure perplexity on.",
    )
    p.add_argument("--ctx", type=int, default=512, help="tokens per sequence (default 512)")
    p.add_argument("--chunks", type=int, default=8, help="sequences, spread over the text (default 8)")
    add_rotate_arg(p, "collect on the rotated model, for `quantize --rotate` (same seed; default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgelut.quantize.convert import load_source
    from edgelut.quantize.imatrix import imatrix_from_text, save_imatrix

    if args.ctx < 2 or args.chunks < 1:
        raise UserError(f"--ctx must be >= 2 and --chunks >= 1, got {args.ctx} and {args.chunks}")
    for t in args.text or ():
        if not Path(t).is_file():
            raise UserError(f"--text: {t} is not a file")
    out = Path(args.output)
    if out.is_dir():
        raise UserError(f"-o: {out} is a directory")
    model = load_source(args.source)
    if args.rotate is not None:
        from edgelut.quantize.rotate import rotate_model

        model = rotate_model(model, args.rotate)
    text = "\n".join(Path(t).read_text(encoding="utf-8") for t in args.text) if args.text else None
    im = imatrix_from_text(
        model,
        text,
        ctx=args.ctx,
        chunks=args.chunks,
        datasets=[str(t) for t in args.text] if args.text else ["builtin"],
        progress=not args.quiet,
        rotation=-1 if args.rotate is None else args.rotate,
    )
    print(save_imatrix(out, im))
    return 0
