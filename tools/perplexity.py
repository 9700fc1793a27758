#!/usr/bin/env python3
"""Perplexity of a model with the numpy reference forward pass (models/reference.py).

    python tools/perplexity.py MODEL [--text FILE] [--ctx 512] [--chunks N]

MODEL is anything ``edgelut.models.importers.load_model`` accepts (a .gguf
file, a Hugging Face directory, an .onnx export, hf:org/name, or any format a
registered importer adds, e.g. edgelut model files loaded as dequantised
weights). The text defaults to the Lee corpus. The method is llama.cpp's
llama-perplexity: disjoint windows of ctx tokens, the second half of each
scored, BOS put first in each window if the tokenizer adds BOS; so numbers are
directly comparable with `llama-perplexity -m MODEL -f FILE -c CTX --chunks N`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from edgelut.models.datasets import lee_corpus
from edgelut.models.importers import load_model
from edgelut.models.reference import perplexity
from edgelut.tokenizer import Tokenizer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="model source: .gguf, HF directory, .onnx, hf:org/name")
    ap.add_argument("--text", type=Path, help="UTF-8 text file (default: the Lee corpus)")
    ap.add_argument("--ctx", type=int, default=512, help="window length in tokens (default 512)")
    ap.add_argument("--chunks", type=int, default=None, help="number of windows (default: all)")
    ap.add_argument("--float64", action="store_true", help="run the reference in float64")
    args = ap.parse_args(argv)

    try:
        text_path = args.text or lee_corpus()
        text = Path(text_path).read_text(encoding="utf-8", errors="replace")
        model = load_model(args.model)
        tok = Tokenizer(model.tokenizer)
        ids = tok.encode(text, add_special=True, parse_special=False)  # as llama-perplexity does
        bos = tok.bos_id if model.tokenizer.add_bos else None
        print(f"{text_path}: {len(ids)} tokens; ctx {args.ctx}", file=sys.stderr)
        start = time.perf_counter()
        res = perplexity(
            model,
            ids,
            ctx=args.ctx,
            n_chunks=args.chunks,
            bos_id=bos,
            dtype=np.float64 if args.float64 else np.float32,
        )
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"perplexity: error: {e}", file=sys.stderr)
        return 2
    took = time.perf_counter() - start
    se = (
        float(np.std(res.nll) / math.sqrt(res.nll.size)) * res.perplexity
    )  # delta method, as llama.cpp reports
    print(
        f"perplexity {res.perplexity:.4f} +/- {se:.4f} over {res.chunks} chunks of {res.ctx} "
        f"({res.nll.size} scored tokens, {took:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
