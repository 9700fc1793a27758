"""Pieces shared by the sub-commands: model resolution and common flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgelut.cli import UserError
from edgelut.cli.distributed_args import add_coordinator_args, coordinator_options

# No system message by default: the model's chat template then applies its own
# default (SmolLM2's names the model, Qwen2.5's too), as llama.cpp and
# transformers do. A small model's greedy reply is fragile to it: on SmolLM2-135M
# with the LUT prefill path, a generic "You are a helpful assistant." turned the
# answer to "What is the capital of France?" into a French ramble, where the
# template's own default gave "The capital of France is Paris." (both give that
# with the int8 prefill path).
DEFAULT_SYSTEM = ""
SYSTEM_HELP = "system message (default: none, so the chat template's own default applies)"


def add_model_args(p: argparse.ArgumentParser, *, optional: bool = True) -> None:
    if optional:
        p.add_argument(
            "model",
            nargs="?",
            default=None,
            help="a model name (edgelut list / pull), a model file, or a source converted once "
            "into the cache (GGUF, HF dir, ONNX); default: smollm2-135m-instruct",
        )
    else:
        p.add_argument("model", help="a model name, a model file, or a source converted once into the cache")
    p.add_argument("-t", "--threads", type=int, default=0, help="threads (0 = all cores)")
    p.add_argument("-c", "--ctx", type=int, default=2048, help="context length in tokens")
    p.add_argument(
        "--kv-type",
        default="f16",
        choices=("f16", "f32", "q8"),
        help="KV cache storage: f16 (default), f32, or q8 (int8, 0.56x the memory of f16)",
    )
    p.add_argument(
        "--context-overflow",
        default="error",
        choices=("error", "slide"),
        help="on a full context: stop (error), or keep the first --keep tokens and the recent half (slide)",
    )
    p.add_argument("--keep", type=int, default=32, help="tokens kept at the start when sliding (default 32)")
    p.add_argument(
        "--mmap",
        action="store_true",
        help="map the model file instead of reading it into huge-page memory (slower decode; "
        "the pages stay shared with the page cache)",
    )
    add_coordinator_args(p)
    paging = p.add_argument_group("paging (models larger than memory)")
    paging.add_argument(
        "--memory-budget",
        type=parse_size,
        default=0,
        metavar="SIZE",
        help="page layer weights to stay within SIZE bytes (e.g. 300M, 1.5G); 0 = no paging",
    )
    paging.add_argument(
        "--window", type=int, default=0, help="resident layer slots (0 = all, or from the budget)"
    )
    paging.add_argument(
        "--drop-cache", action="store_true", help="drop paged layers from the page cache after reading them"
    )
    paging.add_argument(
        "--page-output",
        action="store_true",
        help="with paging, also stream the lm_head and read embedding rows on demand",
    )


def add_rotate_arg(p: argparse.ArgumentParser, help: str) -> None:
    """`--rotate [SEED]` (quantize/rotate.py): seed 0 when given bare, None when absent."""
    p.add_argument("--rotate", type=int, nargs="?", const=0, default=None, metavar="SEED", help=help)


def positive_int(name: str, value: int, *, allow_zero: bool = False) -> int:
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def parse_size(text: str) -> int:
    """'300M' -> 314572800; plain numbers are bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 300M or 1.5G)") from None


def resolve_model(model: str | None) -> Path:
    """An edgelut model file for `model` (default: the default model): a model file
    as it is; a registry name or a source path converted once into the cache."""
    from edgelut import store
    from edgelut.registry import DEFAULT_MODEL

    return store.resolve(model or DEFAULT_MODEL)


def load_model(args: argparse.Namespace):
    import edgelut

    positive_int("--threads", args.threads, allow_zero=True)
    positive_int("--ctx", args.ctx)
    positive_int("--window", args.window, allow_zero=True)
    positive_int("--memory-budget", args.memory_budget, allow_zero=True)
    positive_int("--keep", args.keep, allow_zero=True)
    path = resolve_model(args.model)
    return edgelut.load(
        str(path),
        n_threads=args.threads,
        n_ctx=args.ctx,
        window=args.window,
        memory_budget=args.memory_budget,
        drop_cache=args.drop_cache,
        page_output=args.page_output,
        kv_type=args.kv_type,
        context_overflow=args.context_overflow,
        n_keep=args.keep,
        distributed=coordinator_options(args),
        mmap=args.mmap,
    )
