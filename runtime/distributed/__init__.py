"""Tensor parallelism over a network: one model split over several devices.

The coordinator holds the tokenizer, sampling and its own shard and listens;
workers (``edgelut worker``) dial out to it. The transport, the handshake,
CURVE and the all-reduce are C++ (csrc/net/); this package finds libzmq,
reads keys and carries the options (:class:`DistributedOptions`) from the
command line and ``edgelut.load`` down to it.
"""

from __future__ import annotations

from edgelut.distributed.keys import (
    KeyPair,
    generate_keypair,
    read_allowed_keys,
    read_keypair,
    read_public_key,
)
from edgelut.distributed.options import DistributedOptions

__all__ = [
    "DistributedOptions",
    "KeyPair",
    "generate_keypair",
    "read_allowed_keys",
    "read_keypair",
    "read_public_key",
]
