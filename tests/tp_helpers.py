"""Real processes for the tensor-parallel tests: workers started with the CLI a
user runs, a free loopback port each, and nothing left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Workers:
    """Worker processes of one test; stop() kills whatever is still running."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, model: Path | str, url: str, rank: int, shards: int, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "edgelut.cli", "worker", str(model), "--connect", url]
        cmd += ["--rank", str(rank), "--shards", str(shards), "-t", "1", *extra]
        p = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
        )
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.communicate(timeout=10)


def finish(p: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """Waits for p (at most timeout s, else fails the test); its exit code and stderr."""
    t0 = time.monotonic()
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError(f"the process did not exit within {timeout} s") from None
    assert time.monotonic() - t0 <= timeout
    return p.returncode, err


def greedy_steps(engine, ids: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    """Greedy tokens after ids and the logits of every step, one token at a time as decode runs."""
    engine.reset()
    logits = [engine.eval(np.asarray(ids, np.int32), 0)]
    tokens: list[int] = []
    for i in range(steps):
        tokens.append(int(np.argmax(logits[-1])))
        logits.append(engine.eval(np.asarray(tokens[-1:], np.int32), len(ids) + i))
    return tokens, np.array(logits)
