"""How a model is split over N devices: the shard planner behind ``edgelut shard``.

Every device holds a contiguous range of q heads (the kv heads those read,
duplicated where a GQA group straddles two devices) and a contiguous range of
FFN columns, of every layer, and a range of the token embeddings' columns (one
all-reduce per forward pass joins the embedded row); the coordinator (rank 0)
also holds the lm_head (with tied embeddings, the whole table).
Decode is bound by the bytes each device streams per token, so the split
balances weight bytes to ``weights`` (each device's relative speed): heads are
divided first, then the FFN columns make up each device's share, with the
coordinator's lm_head counted against its share.

Boundaries are kept where slicing the packed weights is exact: q-head ranges
start at multiples of ``head_unit`` heads (so attn_output's columns split on a
quantisation group) and FFN ranges at multiples of ``ffn_unit`` columns (a
group of ffn_down's columns and a 64-row tile of ffn_gate/ffn_up).

The other split, ``plan_layers`` (``--split layers``), gives each device a
contiguous range of whole layers (a pipeline: one hand-off of the residual
stream per device per token instead of two all-reduces per layer), and
``choose_split`` picks between the two by the latency model of
docs/ARCHITECTURE.md ("Layer split").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from edgelut.models.config import ModelConfig

__all__ = [
    "MAX_DEVICES",
    "SPLITS",
    "ShardPlan",
    "choose_split",
    "parse_weights",
    "plan_layers",
    "plan_shards",
    "predict_token_s",
]

SPLITS = ("heads", "layers")

MAX_DEVICES = 8
TILE_ROWS = 64  # rows per packed tile (csrc/kernels/layout.h kTileRows)


@dataclass(frozen=True)
class ShardPlan:
    """One device's part of every layer (half-open ranges)."""

    rank: int
    world_size: int
    q_heads: tuple[int, int]
    kv_heads: tuple[int, int]
    ffn: tuple[int, int]
    lm_head: bool  # the coordinator's shard computes the logits
    embd: tuple[int, int]  # token-embedding columns it holds and adds to the residual
    layers: tuple[int, int] | None = None  # a layer split: the layers it runs (None: a slice of every layer)

    @property
    def n_q_heads(self) -> int:
        return self.q_heads[1] - self.q_heads[0]

    @property
    def n_ffn(self) -> int:
        return self.ffn[1] - self.ffn[0]


def parse_weights(text: str | None, n_devices: int) -> list[float]:
    """``--weights 1,1,2`` as a list of n_devices positive shares (equal when None)."""
    if text is None or text == "":
        return [1.0] * n_devices
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--weights must be comma-separated numbers, got {text!r}") from None
    if len(values) != n_devices:
        raise ValueError(f"--weights gives {len(values)} shares for {n_devices} devices")
    if any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f"--weights must all be positive finite numbers, got {text!r}")
    return values


def _apportion(total: int, shares: Sequence[float], minimum: int = 1) -> list[int]:
    """total units in proportion to shares (largest remainder), each at least ``minimum``."""
    n = len(shares)
    if total < minimum * n:
        raise ValueError(f"cannot give {n} devices {minimum} of {total} units each")
    s = sum(shares)
    if s <= 0:
        shares, s = [1.0] * n, float(n)
    ideal = [max(0.0, total * w / s) for w in shares]
    out = [max(minimum, int(math.floor(x))) for x in ideal]
    # Hand out (or take back) units by the largest (smallest) remainder.
    while sum(out) < total:
        i = max(range(n), key=lambda j: ideal[j] - out[j])
        out[i] += 1
    while sum(out) > total:
        candidates = [j for j in range(n) if out[j] > minimum]
        i = min(candidates, key=lambda j: ideal[j] - out[j])
        out[i] -= 1
    return out


def _ranges(counts: Sequence[int], unit: int, end: int) -> list[tuple[int, int]]:
    """Consecutive ranges of counts[i] units; the last one ends at ``end`` (a ragged last unit)."""
    out, at = [], 0
    for i, c in enumerate(counts):
        stop = end if i == len(counts) - 1 else min(end, at + c * unit)
        out.append((at, stop))
        at = stop
    return out


def head_unit(config: ModelConfig, group_size: int) -> int:
    """q heads per indivisible step: attn_output's columns must split on a whole quantisation group."""
    return group_size // math.gcd(group_size, config.head_dim)


def ffn_unit(group_size: int) -> int:
    return group_size * TILE_ROWS // math.gcd(group_size, TILE_ROWS)


def plan_shards(
    config: ModelConfig,
    n_devices: int,
    weights: Sequence[float] | None = None,
    *,
    group_size: int = 32,
) -> list[ShardPlan]:
    """Split ``config``'s layers over n_devices (2..8) in proportion to ``weights``.

    Raises ValueError naming the limit when the model has too few heads or FFN
    columns for that many devices.
    """
    if not 2 <= n_devices <= MAX_DEVICES:
        raise ValueError(f"--devices must be in 2..{MAX_DEVICES}, got {n_devices}")
    shares = list(weights) if weights is not None else [1.0] * n_devices
    if len(shares) != n_devices or any(not math.isfinite(w) or w <= 0 for w in shares):
        raise ValueError(f"need {n_devices} positive weights, got {list(shares)}")
    hu, fu = head_unit(config, group_size), ffn_unit(group_size)
    head_units = math.ceil(config.n_heads / hu)
    ffn_units = math.ceil(config.intermediate_size / fu)
    if head_units < n_devices:
        raise ValueError(
            f"{config.n_heads} q heads split in steps of {hu} give at most {head_units} devices, "
            f"not {n_devices}"
        )
    if ffn_units < n_devices:
        raise ValueError(
            f"{config.intermediate_size} FFN columns in steps of {fu} give at most {ffn_units} devices, "
            f"not {n_devices}"
        )
    head_counts = _apportion(head_units, shares)
    q_ranges = _ranges(head_counts, hu, config.n_heads)

    # Weight bytes are proportional to parameters at one bit width: balance those.
    d, hd, group = config.hidden_size, config.head_dim, config.n_heads // config.n_kv_heads
    layers = config.n_layers

    def kv_of(q: tuple[int, int]) -> tuple[int, int]:
        return q[0] // group, (q[1] - 1) // group + 1

    attn = [layers * d * hd * (2 * (q[1] - q[0]) + 2 * (kv_of(q)[1] - kv_of(q)[0])) for q in q_ranges]
    per_unit = layers * 3 * d * fu  # gate, up and down of fu columns
    lm_head = config.vocab_size * d
    total = sum(attn) + layers * 3 * d * config.intermediate_size + lm_head
    want = [total * w / sum(shares) - attn[i] - (lm_head if i == 0 else 0) for i, w in enumerate(shares)]
    ffn_counts = _apportion(ffn_units, [max(x, 0.0) / per_unit for x in want])
    ffn_ranges = _ranges(ffn_counts, fu, config.intermediate_size)
    # The embedding table by columns (a worker stores only its part; a lookup costs no time).
    embd_units = math.ceil(d / group_size)
    if embd_units < n_devices:
        raise ValueError(f"{d} embedding columns in steps of {group_size} give at most {embd_units} devices")
    embd_ranges = _ranges(_apportion(embd_units, shares), group_size, d)
    return [
        ShardPlan(r, n_devices, q_ranges[r], kv_of(q_ranges[r]), ffn_ranges[r], r == 0, embd_ranges[r])
        for r in range(n_devices)
    ]


def plan_layers(
    config: ModelConfig,
    n_devices: int,
    weights: Sequence[float] | None = None,
    *,
    sizes: tuple[float, float] | None = None,
) -> list[ShardPlan]:
    """A layer split (pipeline): contiguous layer ranges over n_devices (2..8).

    Rank 0 (the coordinator) runs the first layers and also holds the
    embeddings, the final norm and the lm_head, which count against its share
    (both tables when they are not tied). ``sizes`` (bytes of one layer, bytes
    outside the layers) balance a file's real bytes; default: parameter counts.
    During decode the devices run one after another, so a token costs the
    whole model's compute whatever the split: ``weights`` divide the model's
    bytes (each device's memory), not its time.
    """
    if not 2 <= n_devices <= MAX_DEVICES:
        raise ValueError(f"--devices must be in 2..{MAX_DEVICES}, got {n_devices}")
    shares = list(weights) if weights is not None else [1.0] * n_devices
    if len(shares) != n_devices or any(not math.isfinite(w) or w <= 0 for w in shares):
        raise ValueError(f"need {n_devices} positive weights, got {list(shares)}")
    layers = config.n_layers
    if layers < n_devices:
        raise ValueError(f"{layers} layers give at most {layers} devices a layer each, not {n_devices}")
    d, hd = config.hidden_size, config.head_dim
    if sizes is not None:  # measured: bytes of a layer, bytes of everything outside the layers
        per_layer, head = sizes
    else:  # parameters; the coordinator stores the lm_head and, untied, the token embeddings
        per_layer = d * hd * (2 * config.n_heads + 2 * config.n_kv_heads) + 3 * d * config.intermediate_size
        head = config.vocab_size * d * (1 if config.tie_embeddings else 2)
    total = layers * per_layer + head
    want = [total * w / sum(shares) - (head if i == 0 else 0) for i, w in enumerate(shares)]
    spans = _ranges(_apportion(layers, [max(x, 0.0) / per_layer for x in want]), 1, layers)
    full_heads, full_kv = (0, config.n_heads), (0, config.n_kv_heads)
    return [
        ShardPlan(r, n_devices, full_heads, full_kv, (0, config.intermediate_size), r == 0, (0, d), spans[r])
        for r in range(n_devices)
    ]


def predict_token_s(
    config: ModelConfig,
    split: str,
    n_devices: int,
    token_s: float,
    rtt_s: float,
    link_bytes_per_s: float = 0.0,
    sync_bytes_per_value: float = 4.0,
) -> float:
    """Seconds per decode token of a split over n_devices (docs/ARCHITECTURE.md, "Layer split").

    ``token_s``: one device's decode time per token (``edgelut bench``);
    ``rtt_s``: the link's round trip; ``link_bytes_per_s`` 0: bandwidth is free.
    heads: compute / N + (2 L + 1) x RTT + the partial sums through the coordinator's link;
    layers: compute + (N - 1) x RTT + the hidden state out to and back from each worker.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    d, n = config.hidden_size, n_devices
    per_byte = 1.0 / link_bytes_per_s if link_bytes_per_s > 0 else 0.0
    if split == "heads":
        trips = 2 * config.n_layers + 1
        return token_s / n + trips * rtt_s + trips * 2 * (n - 1) * d * sync_bytes_per_value * per_byte
    return token_s + (n - 1) * rtt_s + 2 * (n - 1) * d * 4 * per_byte


def choose_split(
    config: ModelConfig,
    n_devices: int,
    token_s: float,
    rtt_s: float,
    link_bytes_per_s: float = 0.0,
) -> tuple[str, dict[str, float]]:
    """The faster split by :func:`predict_token_s` and both predictions (seconds per token).

    The rule: heads pay off when what they save in compute, token_s x (1 - 1/N),
    exceeds the round trips they add, about (2 L + 2 - N) x RTT.
    """
    pred = {s: predict_token_s(config, s, n_devices, token_s, rtt_s, link_bytes_per_s) for s in SPLITS}
    return min(SPLITS, key=lambda s: pred[s]), pred
