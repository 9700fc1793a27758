"""``memory_budget`` as a bound on the whole process, not just on the weights.

The engine's pager sizes its window so that the layer slots, the pinned
tensors, the KV cache and its scratch fit the bytes it is given
(``Pager::window_for_budget``). Everything else the process holds is measured
here, once, just before the engine is built: the interpreter, numpy and the
other libraries, the model file's metadata and the tokenizer (its VmRSS at
that moment). A fixed reserve covers what the Python side allocates while
generating (the tokenizer's caches, the logits row handed back per call, the
text stream). The engine gets what is left; a budget that leaves it less than
the smallest window is refused up front with the minimum it can honour.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "PYTHON_RESERVE",
    "BudgetError",
    "engine_budget",
    "engine_minimum",
    "refuse_early",
    "reserve_bytes",
    "rss_bytes",
    "too_small",
]

# Bytes kept back for the Python side's allocations after start-up (measured on SmolLM2 and
# Qwen2.5-Coder-1.5B: docs/ARCHITECTURE.md "One way in", "A budget that holds").
PYTHON_RESERVE = 32 << 20


class BudgetError(ValueError):
    """A memory budget the process cannot honour; the message names the minimum."""


def rss_bytes() -> int:
    """This process's resident set now (VmRSS), in bytes; 0 where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def engine_budget(budget: int, baseline: int, vocab_size: int) -> int:
    """The bytes the engine may use out of ``budget`` when the process already holds ``baseline``.

    At least 1, so that a budget already spent at start-up reaches the engine, whose
    "too small" error (restated by :func:`too_small`) names the minimum.
    """
    return max(1, budget - baseline - reserve_bytes(vocab_size))


def reserve_bytes(vocab_size: int) -> int:
    return PYTHON_RESERVE + 2 * 4 * vocab_size  # plus two float32 logits rows


KV_BYTES_PER_VALUE = {"f32": 4.0, "f16": 2.0, "q8": 1.0 + 4.0 / 32}  # q8: int8 codes, a float per 32


def engine_minimum(mf: Any, n_ctx: int, kv_type: str, prefill_chunk: int = 64) -> int:
    """The engine's smallest paged footprint for a model file, before anything is allocated.

    The same sum as the C++ ``fixed_bytes_estimate`` plus one slot of the largest layer
    (``Pager::window_for_budget`` at W = 1), so a budget too small is refused before the
    engine copies its pinned tensors; the engine still checks its own figure after.
    """
    c = mf.config
    pinned = sum(e.nbytes for name, e in mf.entries.items() if not name.startswith("blk."))
    kvd, qd = c.n_kv_heads * c.head_dim, c.n_heads * c.head_dim
    kv = int(2 * c.n_layers * n_ctx * kvd * KV_BYTES_PER_VALUE[kv_type])
    d, f, chunk = c.hidden_size, c.intermediate_size, prefill_chunk
    scratch = 4 * (chunk * (2 * d + 2 * qd + 2 * kvd + 2 * f + c.head_dim) + c.n_heads * n_ctx + c.vocab_size)
    largest = max((size for _, size in mf.layer_ranges), default=0)
    return pinned + kv + scratch + (largest + 4095) // 4096 * 4096


def refuse_early(budget: int, baseline: int, vocab_size: int, minimum_engine: int) -> BudgetError | None:
    """A BudgetError when ``budget`` cannot hold the start-up footprint, the reserve and the engine."""
    if budget - baseline - reserve_bytes(vocab_size) >= minimum_engine:
        return None
    return _restated(budget, baseline, vocab_size, minimum_engine)


def too_small(err: ValueError, budget: int, baseline: int, vocab_size: int) -> BudgetError | None:
    """The engine's "budget too small" error restated for the whole process, or None if it is another."""
    m = re.search(r"the minimum is (\d+) bytes", str(err))
    return None if not m else _restated(budget, baseline, vocab_size, int(m.group(1)))


def _restated(budget: int, baseline: int, vocab_size: int, engine: int) -> BudgetError:
    minimum = baseline + reserve_bytes(vocab_size) + engine
    return BudgetError(
        f"memory budget {_mib(budget)} cannot be honoured: the minimum is {_mib(minimum)} "
        f"({minimum} bytes: {_mib(baseline)} measured at start-up, a {_mib(reserve_bytes(vocab_size))} "
        f"reserve, and the engine's "
        f"{_mib(engine)} for the pinned tensors, KV cache, scratch and one layer slot)"
    )
