"""`edgelut bench MODEL`: prefill and decode speed and peak memory, like llama-bench.

Prefill evaluates a prompt of -p tokens in one call; decode generates -n
tokens one at a time after it. Each is repeated -r times; the median is shown.
--profile adds where the time of a decode token and of a prefill chunk goes
(linear layers, their activation tables, lm_head, attention, norms/RoPE/SwiGLU
and the rest).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from edgelut import kernels
from edgelut.cli.common import add_model_args, load_model, positive_int
from edgelut.model import PagingStats
from edgelut.model import _peak_rss_mb as peak_rss_mb


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure prefill/decode tokens per second", description=__doc__)
    add_model_args(p)
    p.add_argument("-p", "--prompt-tokens", type=int, default=128)
    p.add_argument("-n", "--gen-tokens", type=int, default=64)
    p.add_argument("-r", "--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--profile", action="store_true", help="also time each part of the forward pass")
    p.add_argument(
        "--matmul-path",
        choices=("auto", "lut", "int8"),
        default="auto",
        help="prefill kernels: auto (per call), or force the LUT or the int8 kernels",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    positive_int("--prompt-tokens", args.prompt_tokens)
    positive_int("--gen-tokens", args.gen_tokens)
    positive_int("--repeats", args.repeats)
    model = load_model(args)
    if args.prompt_tokens + args.gen_tokens > model.n_ctx:
        raise ValueError(
            f"--prompt-tokens + --gen-tokens = {args.prompt_tokens + args.gen_tokens} exceeds "
            f"the context of {model.n_ctx} tokens (raise --ctx)"
        )
    engine = model.engine
    engine.matmul_path = args.matmul_path
    rng = np.random.default_rng(0)
    # Random ids from the ordinary vocabulary: speed does not depend on the text.
    ids = rng.integers(100, min(model.config.vocab_size, 30000), size=args.prompt_tokens).tolist()
    prefill, decode = [], []
    paging = PagingStats(window=engine.window)  # summed over the decode runs when paged
    for _ in range(args.repeats):
        model.reset()
        t0 = time.perf_counter()
        logits = engine.eval(np.asarray(ids, dtype=np.int32), 0, all_logits=False)
        prefill.append(args.prompt_tokens / (time.perf_counter() - t0))
        # Decode one token at a time, greedily, as generation does.
        tok, pos = int(np.argmax(logits)), args.prompt_tokens
        before = engine.pager_stats()
        if model.group is not None:  # the transport numbers of the decode phase
            model.group.reset_stats()
        t0 = time.perf_counter()
        for _ in range(args.gen_tokens):
            logits = engine.eval(np.asarray([tok], dtype=np.int32), pos, all_logits=False)
            tok, pos = int(np.argmax(logits)), pos + 1
        seconds = time.perf_counter() - t0
        decode.append(args.gen_tokens / seconds)
        if before is not None:
            run = PagingStats.between(engine.window, before, engine.pager_stats(), args.gen_tokens, seconds)
            paging = add_paging(paging, run)
    result = {
        "model": model.config.name or model.config.architecture,
        "threads": model.n_threads,
        "isa": kernels.cpu_isa(),
        "cpu_features": kernels.cpu_features(),
        "prompt_tokens": args.prompt_tokens,
        "prefill_tokens_per_s": statistics.median(prefill),
        "gen_tokens": args.gen_tokens,
        "decode_tokens_per_s": statistics.median(decode),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "matmul_path": args.matmul_path,
        "weight_memory": engine.weight_memory,
        "huge_page_mb": round(engine.huge_page_bytes / 2**20, 1),
    }
    if args.profile:
        result["profile"] = {
            "prefill": profile_pass(model, ids, 1),
            "decode": profile_pass(model, ids, args.gen_tokens),
        }
    if paging.tokens:
        result["paging"] = paging_json(paging)
    if model.group is not None:
        result["tensor_parallel"] = transport_json(model.group.stats(), args.gen_tokens, decode[-1])
    if args.json:
        print(json.dumps(result))
    else:
        print(f"model {result['model']} | threads {result['threads']} | isa {result['isa']}")
        print(f"pp{args.prompt_tokens}: {result['prefill_tokens_per_s']:.1f} tokens/s")
        print(f"tg{args.gen_tokens}: {result['decode_tokens_per_s']:.1f} tokens/s")
        print(f"peak RSS: {result['peak_rss_mb']} MiB")
        where = WEIGHT_MEMORY.get(engine.weight_memory, "in memory")
        print(f"weights: {where}, {result['huge_page_mb']} MiB in huge pages")
        if args.profile:
            print(format_profile(result["profile"]))
        if paging.tokens:
            print(paging.summary())
        if model.group is not None:
            tp = result["tensor_parallel"]
            print(
                f"tensor parallel ({tp['devices']} devices): per token {tp['compute_ms']:.2f} ms compute, "
                f"{tp['comm_ms']:.2f} ms transport, KiB sent by device 0..: "
                + ", ".join(f"{b / 1024:.1f}" for b in tp["bytes_sent_per_token"])
            )
    return 0


# How the engine holds a model file's weights (Engine.weight_memory).
WEIGHT_MEMORY = {
    "read": "read into huge-page memory",
    "mmap": "mapped from the file (--mmap, or no transparent huge pages)",
    "paged": "paged",
}


def transport_json(stats: dict, tokens: int, tokens_per_s: float) -> dict:
    """Per decode token (the last repeat): the coordinator's compute and transport time
    (waiting for the slowest device included) and the bytes each device sent."""
    comm_ms = stats["comm_s"] / tokens * 1e3
    return {
        "devices": len(stats["bytes_sent"]),
        "comm_ms": comm_ms,
        "compute_ms": 1e3 / tokens_per_s - comm_ms,
        "bytes_sent_per_token": [b / tokens for b in stats["bytes_sent"]],
        "all_reduces_per_token": stats["all_reduces"] / tokens,
        # A layer split: hand-offs of the residual stream (each includes that worker's layers).
        "hidden_passes_per_token": stats.get("hidden_passes", 0) / tokens,
    }


# Rows of the profile: (label, key in the engine's profile dict).
PROFILE_ROWS = (
    ("linear q/k/v/o", "matmul_attn"),
    ("linear gate/up/down", "matmul_ffn"),
    ("lm_head", "lm_head"),
    ("  of these three: activation tables", "tables"),
    ("attention", "attention"),
    ("norms, RoPE, SwiGLU, residuals", "elementwise"),
    ("other (KV store, overhead)", "other"),
)


def profile_pass(model, ids: list[int], n_decode: int) -> dict[str, float]:
    """Milliseconds per token in each part: the whole prompt (n_decode == 1,
    i.e. prefill in chunks of the engine's prefill_chunk) or n_decode tokens
    decoded one at a time after it."""
    engine = model.engine
    model.reset()
    prompt = np.asarray(ids, dtype=np.int32)
    if n_decode > 1:
        engine.eval(prompt, 0, all_logits=False)
    engine.reset_profile()
    engine.set_profiling(True)
    try:
        t0 = time.perf_counter()
        if n_decode > 1:
            tok, pos = 1000, len(ids)
            for _ in range(n_decode):
                logits = engine.eval(np.asarray([tok], dtype=np.int32), pos, all_logits=False)
                tok, pos = int(np.argmax(logits)), pos + 1
            n = n_decode
        else:
            engine.eval(prompt, 0, all_logits=False)
            n = len(ids)
        wall = time.perf_counter() - t0
    finally:
        engine.set_profiling(False)
    prof = engine.profile()
    out = {key: 1e3 * float(prof.get(key, 0.0)) / n for _, key in PROFILE_ROWS}
    out["total"] = 1e3 * wall / n
    return out


def format_profile(prof: dict[str, dict[str, float]]) -> str:
    lines = ["", "| ms per token | decode | % | prefill | % |", "| --- | --- | --- | --- | --- |"]
    d, p = prof["decode"], prof["prefill"]
    for label, key in (*PROFILE_ROWS, ("total (wall)", "total")):
        lines.append(
            f"| {label} | {d[key]:.3f} | {100 * d[key] / d['total']:.0f} | "
            f"{p[key]:.3f} | {100 * p[key] / p['total']:.0f} |"
        )
    return "\n".join(lines)


def add_paging(total: PagingStats, run: PagingStats) -> PagingStats:
    """The sum of two decode runs' paging numbers."""
    return PagingStats(
        window=run.window,
        tokens=total.tokens + run.tokens,
        seconds=total.seconds + run.seconds,
        io_wait_s=total.io_wait_s + run.io_wait_s,
        io_read_s=total.io_read_s + run.io_read_s,
        bytes_read=total.bytes_read + run.bytes_read,
    )


def paging_json(p: PagingStats) -> dict:
    """Per-token decode paging numbers for --json."""
    return {
        "window": p.window,
        "token_ms": round(p.token_ms, 3),
        "compute_ms": round(p.compute_ms, 3),
        "io_wait_ms": round(p.io_wait_ms, 3),
        "io_ms": round(p.io_ms, 3),
        "bytes_read_per_token": round(p.bytes_per_token),
        "overlap": round(p.overlap, 3),
    }
