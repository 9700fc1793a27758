"""The command line: every bad flag or missing file is one clear line and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest


def edgelut(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgelut.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_subcommands() -> None:
    r = edgelut("--help")
    assert r.returncode == 0
    for name in ("chat", "run", "bench", "perplexity"):
        assert name in r.stdout


def test_no_command_prints_help_and_fails() -> None:
    r = edgelut()
    assert r.returncode == 2
    assert "usage" in r.stdout.lower()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("chat", "/no/such/model.gguf"), "model file '/no/such/model.gguf' does not exist"),
        (("run", "/no/such/model.gguf", "-p", "hi"), "does not exist"),
        (("bench", "/no/such/model.gguf"), "does not exist"),
        (("chat", "/no/such/model.gguf", "--threads", "-1"), "--threads must be >= 0, got -1"),
        (("chat", "/no/such/model.gguf", "--ctx", "0"), "--ctx must be > 0, got 0"),
        (("bench", "/no/such/model.gguf", "--repeats", "0"), "--repeats must be > 0, got 0"),
        (
            ("perplexity", "/no/such/model.gguf", "/no/such/text.txt"),
            "text file '/no/such/text.txt' does not exist",
        ),
    ],
)
def test_bad_input_is_one_clear_line(args: tuple[str, ...], message: str) -> None:
    r = edgelut(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert message in lines[0]
    assert lines[0].startswith(f"edgelut {args[0]}: error:")


def test_unknown_flag_is_an_argparse_error() -> None:
    r = edgelut("chat", "--no-such-flag")
    assert r.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in r.stderr


def test_run_needs_a_prompt() -> None:
    r = edgelut("run", "model.gguf")
    assert r.returncode == 2
    assert "-p/--prompt" in r.stderr


def test_memory_budget_must_be_a_size() -> None:
    r = edgelut("bench", "model.elut", "--memory-budget", "3X")
    assert r.returncode == 2
    assert "not a size: '3X'" in r.stderr


def test_closed_stdout_pipe_is_not_a_traceback() -> None:
    """`edgelut info FILE | head -1`: when the reader has gone, exit quietly, no traceback."""
    import os
    import subprocess
    import sys

    from edgelut import cache

    r, w = os.pipe()
    os.close(r)  # every write to stdout now fails with EPIPE
    try:
        cmd = [sys.executable, "-m", "edgelut.cli", "info", str(cache.default_model_file())]
        proc = subprocess.run(cmd, stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(w)
    assert "Traceback" not in proc.stderr and proc.returncode == 141, proc.stderr
