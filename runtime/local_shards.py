"""Every shard of a model in one process, one thread each, joined by the in-process all-reduce.

The network transport (edgelut.distributed) puts the shards on other devices;
this group is how shard files are checked and measured without one: the
tests compare it with the whole model, and tools/bench_tp.py measures the
split's compute on this machine.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgelut import _core
from edgelut.shard_file import ShardInfo, read_manifest

__all__ = ["LocalShardGroup"]


class LocalShardGroup:
    """The shards of ``shard_dir`` on threads of this process; ``engine_kw`` go to every engine
    (n_ctx, n_threads, window, budget_bytes, page_output, ...)."""

    def __init__(self, shard_dir: str | os.PathLike[str], timeout: float = 600.0, **engine_kw: Any) -> None:
        self.manifest, self.shards = read_manifest(shard_dir)
        comms = _core.make_local_group(len(self.shards))
        self.engines = [s.engine(c, **engine_kw) for s, c in zip(self.shards, comms, strict=True)]
        self.timeout = timeout

    @property
    def coordinator(self) -> ShardInfo:
        return self.shards[0]

    def _all(self, call: Any) -> list[Any]:
        out: list[Any] = [None] * len(self.engines)
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                out[i] = call(self.engines[i])
            except BaseException as e:  # reported below, on the caller's thread
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(self.engines))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.timeout)
        if any(t.is_alive() for t in threads):
            raise TimeoutError(f"a shard did not finish within {self.timeout:.0f} s")
        if errors:
            raise errors[0]
        return out

    def eval(self, ids: Sequence[int], start_pos: int = 0, all_logits: bool = False) -> np.ndarray:
        """The coordinator's logits for ids at start_pos.. (every shard runs the same tokens)."""
        a = np.asarray(ids, dtype=np.int32)
        return self._all(lambda e: e.eval(a, start_pos, all_logits=all_logits))[0]

    def greedy(self, prompt: Sequence[int], n_tokens: int) -> list[int]:
        """n_tokens greedy tokens after the prompt, from position 0."""
        logits = self.eval(prompt, 0)
        pos, out = len(prompt), []
        for _ in range(n_tokens):
            tok = int(np.argmax(logits))
            out.append(tok)
            logits = self.eval([tok], pos)
            pos += 1
        return out
