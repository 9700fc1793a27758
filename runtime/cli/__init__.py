"""The `edgelut` command line: one module per sub-command, each with register()."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Sub-command modules under edgelut.cli; each defines register(subparsers) that
# adds its parser and sets `func(args) -> int` as the default.
SUBCOMMANDS = (
    "chat",
    "run",
    "bench",
    "perplexity",
    "quantize",
    "imatrix",
    "info",
    "pull",
    "list",
    "rm",
    "serve",
    "shard",
    "keygen",
    "worker",
)


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgelut", description="Low-bit LLM inference on edge CPUs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"edgelut.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"edgelut.cli.{name}":
                raise
            continue  # sub-command not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # The reader of our stdout went away (`edgelut info F | head`): stop quietly, like
        # coreutils do; point stdout at devnull so the interpreter's final flush does not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (UserError, ValueError, OSError, RuntimeError) as e:
        # OSError: a path that cannot be read (FileNotFoundError, the model reader's FileAccessError).
        print(f"edgelut {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
