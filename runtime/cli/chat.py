"""`edgelut chat`: an interactive chat that streams tokens and keeps history.

Commands: /reset clears the history, /stats prints speed and memory, /exit
leaves. Ctrl-C stops the current reply, not the program. With stdin piped,
each line is one user turn and the program ends at end of input.
"""

from __future__ import annotations

import argparse
import sys

from edgelut.cli.common import DEFAULT_SYSTEM, SYSTEM_HELP, add_model_args, load_model
from edgelut.cli.sampling_args import add_sampling_args, sampling_kwargs

HELP = "commands: /reset (clear history), /stats (speed, memory), /exit"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with a model", description=__doc__)
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--system", default=DEFAULT_SYSTEM, help=SYSTEM_HELP)
    p.add_argument("-n", "--max-tokens", type=int, default=512, help="longest reply in tokens")
    think = p.add_mutually_exclusive_group()
    think.add_argument(
        "--think",
        dest="enable_thinking",
        action="store_const",
        const=True,
        default=None,
        help="ask a reasoning model (Qwen3) to think first (its template's enable_thinking)",
    )
    think.add_argument(
        "--no-think",
        dest="enable_thinking",
        action="store_const",
        const=False,
        help="ask a reasoning model to answer without thinking",
    )
    p.add_argument(
        "--show-thinking", action="store_true", help="print the <think>...</think> block (hidden by default)"
    )
    p.set_defaults(func=run)


def format_stats(stats) -> str:
    """One line from Model.stats (a GenerationStats) for /stats."""
    return (
        (
            f"prompt {stats.prompt_tokens} tokens ({stats.cached_tokens} from cache), "
            f"prefill {stats.prefill_tokens_per_s:.1f} tokens/s, "
            f"reply {stats.completion_tokens} tokens at {stats.decode_tokens_per_s:.1f} tokens/s, "
            f"peak RSS {stats.peak_rss_mb:.0f} MiB"
        )
        + (f"; {stats.paging.summary()}" if stats.paging is not None else "")
        + (f"; {comm_summary(stats.comm, stats.completion_tokens)}" if stats.comm is not None else "")
    )


def comm_summary(comm: dict, tokens: int) -> str:
    """The tensor-parallel transport of a call, per generated token."""
    n = max(tokens, 1)
    sent = ", ".join(f"{b / n / 1024:.1f}" for b in comm["bytes_sent"])
    return f"transport {comm['comm_s'] / n * 1e3:.2f} ms/token, KiB sent per token by device 0..: {sent}"


def run(args: argparse.Namespace) -> int:
    sampling = sampling_kwargs(args)
    model = load_model(args)
    interactive = sys.stdin.isatty()
    base = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(base)
    if interactive:
        name = model.config.name or model.config.architecture
        print(f"edgelut chat: {name}. {HELP}. Ctrl-C stops a reply, Ctrl-D leaves.", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", flush=True, file=sys.stderr)
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        if not line:  # end of input
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            messages = list(base)
            print("(history cleared)", file=sys.stderr)
            continue
        if text == "/stats":
            print(format_stats(model.stats), file=sys.stderr)
            continue
        if text.startswith("/"):
            print(f"unknown command {text.split()[0]}; {HELP}", file=sys.stderr)
            continue
        messages.append({"role": "user", "content": text})
        reply = []
        try:
            pieces = model.chat(
                messages,
                max_tokens=args.max_tokens,
                stream=True,
                enable_thinking=args.enable_thinking,
                show_thinking=args.show_thinking,
                **sampling,
            )
            for piece in pieces:
                reply.append(piece)
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print(" [stopped]", end="", file=sys.stderr)
        except ConnectionError as e:
            # A device of the tensor-parallel group is gone: say so and keep the chat;
            # the turn is dropped, and the next one runs once the device is back.
            print(f"\n[device gone: {e}]", file=sys.stderr)
            messages.pop()
            continue
        print(flush=True)
        messages.append({"role": "assistant", "content": "".join(reply)})
