"""Token ids for `edgelut-chat --ids` (the static aarch64 binary has no
tokenizer): the chat-templated prompt as ids, and ids back to text. Runs
wherever the edgelut Python package does (a PC, or the Pi itself).

    python tools/token_ids.py MODEL.elut encode "What is the capital of France?" [--system S] [--raw]
    python tools/token_ids.py MODEL.elut decode 504 3575 282 4649 314 7042 30

encode prints one line of ids (the user message wrapped in the model's chat
template with the generation prompt; --raw encodes the text as it is);
decode prints the text of the ids (spaces or commas between them).
"""

from __future__ import annotations

import argparse
import sys

import edgelut
from edgelut.cli.common import DEFAULT_SYSTEM, SYSTEM_HELP


def encode(model: edgelut.Model, text: str, system: str, raw: bool) -> list[int]:
    if raw:
        return model.tokenize(text)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}
    ]
    rendered = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    if not isinstance(rendered, str):
        return [int(i) for i in rendered]
    return model.tokenize(rendered, add_special=False)  # the template writes any BOS itself


def parse_ids(words: list[str]) -> list[int]:
    ids = []
    for word in " ".join(words).replace(",", " ").split():
        if not word.isdigit():
            raise ValueError(f"'{word}' is not a token id (non-negative integers expected)")
        ids.append(int(word))
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="an edgelut model file (its tokenizer is used)")
    sub = ap.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="text -> ids")
    enc.add_argument("text")
    enc.add_argument("--system", default=DEFAULT_SYSTEM, help=SYSTEM_HELP)
    enc.add_argument("--raw", action="store_true", help="no chat template")
    dec = sub.add_parser("decode", help="ids -> text")
    dec.add_argument("ids", nargs="+")
    args = ap.parse_args(argv)
    try:
        ids = parse_ids(args.ids) if args.command == "decode" else []
        model = edgelut.load(args.model, n_ctx=16)
        if model.tokenizer is None:
            raise ValueError(f"{args.model} stores no tokenizer")
    except (ValueError, OSError, RuntimeError) as e:
        print(f"token_ids: {e}", file=sys.stderr)
        return 2
    if args.command == "encode":
        print(" ".join(map(str, encode(model, args.text, args.system, args.raw))))
    else:
        print(model.detokenize(ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
