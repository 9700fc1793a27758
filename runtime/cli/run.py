"""`edgelut run MODEL -p TEXT`: complete one prompt and stream the text."""

from __future__ import annotations

import argparse
import sys

from edgelut.cli.common import DEFAULT_SYSTEM, SYSTEM_HELP, add_model_args, load_model
from edgelut.cli.sampling_args import add_sampling_args, sampling_kwargs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="complete one prompt", description=__doc__)
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("-p", "--prompt", required=True, help="the prompt text")
    p.add_argument("-n", "--max-tokens", type=int, default=256)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", default=DEFAULT_SYSTEM, help="with --chat: " + SYSTEM_HELP)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sampling = sampling_kwargs(args)
    model = load_model(args)
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}
        ]
        pieces = model.chat(messages, max_tokens=args.max_tokens, stream=True, **sampling)
    else:
        pieces = model.generate(args.prompt, max_tokens=args.max_tokens, stream=True, **sampling)
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    sys.stdout.write("\n")
    return 0
