"""The server's scheduler streaming a tiny model's generation: what the event loop
hands to a response, and how often it looks."""

from __future__ import annotations

import asyncio
import time

import pytest
from test_engine import CharTokenizer, random_tensors, tiny_config

from edgelut.model import GenerateOptions, Model
from edgelut.server.scheduler import Scheduler


def stream(model: Model, interval: float) -> tuple[list[str], float]:
    """The text events of one 200-token greedy generation, and how long it took."""
    model.reset()
    job = model.completion(
        model.tokenize("abcdefgh"), GenerateOptions(max_tokens=200, temperature=0.0, ignore_eos=True)
    )

    async def run() -> tuple[list[str], float]:
        ticket = Scheduler(4, stream_interval_s=interval).reserve()
        texts: list[str] = []
        t0 = time.perf_counter()
        async for kind, value in ticket.run(job):
            if kind == "text":
                texts.append(value)
        return texts, time.perf_counter() - t0

    return asyncio.run(run())


@pytest.fixture(scope="module")
def model() -> Model:
    cfg = tiny_config()
    return Model.from_float(cfg, random_tensors(cfg), CharTokenizer(), n_ctx=256, n_threads=1)


def test_stream_interval_sends_the_same_text_in_fewer_chunks(model: Model) -> None:
    every, _ = stream(model, 0.0)
    assert "".join(every)
    chunks, elapsed = stream(model, 0.25)
    assert "".join(chunks) == "".join(every)
    # One look at the start, then at most one per interval, plus the end's.
    assert len(chunks) <= 2 + elapsed / 0.25, (len(chunks), elapsed)
