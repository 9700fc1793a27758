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

__all__ = ["PYTHON_RESERVE", "BudgetError", "engine_budget", "reserve_bytes", "rss_bytes", "too_small"]

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


def too_small(err: ValueError, budget: int, baseline: int, vocab_size: int) -> BudgetError | None:
    """The engine's "budget too small" error restated for the whole process, or None if it is another."""
    m = re.search(r"the minimum is (\d+) bytes", str(err))
    if not m:
        return None
    minimum = baseline + reserve_bytes(vocab_size) + int(m.group(1))
    return BudgetError(
        f"memory budget {_mib(budget)} cannot be honoured: the minimum is {_mib(minimum)} "
        f"({minimum} bytes: {_mib(baseline)} measured at start-up, a {_mib(reserve_bytes(vocab_size))} "
        f"reserve, and the engine's "
        f"{_mib(int(m.group(1)))} for the pinned tensors, KV cache, scratch and one layer slot)"
    )
