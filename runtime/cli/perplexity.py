"""`edgelut perplexity MODEL FILE`: perplexity of the engine on a text file.

The text is split into windows of --ctx tokens; the first half of each window
is context and the second half is scored (the llama.cpp convention), so the
figures compare with llama-perplexity at the same context.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from edgelut.cli import UserError
from edgelut.cli.common import add_model_args, load_model, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perplexity", help="perplexity on a text file", description=__doc__)
    add_model_args(p, optional=False)
    p.add_argument("text", help="a UTF-8 text file")
    p.add_argument("--chunks", type=int, default=0, help="score at most this many windows (0 = all)")
    p.set_defaults(func=run)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))


# Rows of logits turned into float64 at a time: the scored half window stays float32 as the
# engine returned it, and only this block is widened (a 151936-token vocabulary is 1.2 MiB a row).
NLL_BLOCK = 32


def negative_log_likelihood(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum over rows of -log softmax(logits[i])[targets[i]], in float64, a block of rows at a time."""
    total = 0.0
    for a in range(0, len(targets), NLL_BLOCK):
        block = log_softmax(logits[a : a + NLL_BLOCK].astype(np.float64))
        total -= float(block[np.arange(block.shape[0]), targets[a : a + NLL_BLOCK]].sum())
    return total


def run(args: argparse.Namespace) -> int:
    positive_int("--chunks", args.chunks, allow_zero=True)
    path = Path(args.text)
    if not path.is_file():
        raise UserError(f"text file {args.text!r} does not exist")
    model = load_model(args)
    # As llama-perplexity: a model whose tokenizer adds BOS gets BOS as the first token of
    # every window (Gemma's attention leans on it; without it Gemma 3 270M scores 22.8, not 18.3).
    tok = model.tokenizer
    bos = getattr(tok, "bos_id", None) if getattr(getattr(tok, "settings", None), "add_bos", False) else None
    ids = model.tokenize(path.read_text(encoding="utf-8"), add_special=bos is not None)
    ctx = args.ctx
    n_windows = len(ids) // ctx
    if args.chunks:
        n_windows = min(n_windows, args.chunks)
    if n_windows == 0:
        raise UserError(f"{args.text} has {len(ids)} tokens, fewer than one window of --ctx {ctx}")
    nll, count = 0.0, 0
    for w in range(n_windows):
        window = list(ids[w * ctx : (w + 1) * ctx])
        if bos is not None:
            window[0] = bos
        first = ctx // 2
        # Logits of positions first .. ctx-2 predict tokens first+1 .. ctx-1; they come a block
        # of rows at a time (the last row, predicting past the window, is unused).
        targets = np.asarray(window[first + 1 :])
        at = 0
        for logits in model.eval_tail(window, first):
            rows = min(len(logits), len(targets) - at)
            nll += negative_log_likelihood(logits[:rows], targets[at : at + rows])
            at += rows
        count += len(targets)
        print(f"[{w + 1}/{n_windows}] ppl so far {math.exp(nll / count):.4f}", flush=True)
    print(f"perplexity: {math.exp(nll / count):.4f} over {count} tokens ({n_windows} windows of {ctx})")
    return 0
