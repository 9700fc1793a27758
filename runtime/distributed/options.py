"""The options of a tensor-parallel group, one dataclass from the CLI to the C++ links."""

from __future__ import annotations

from dataclasses import dataclass

SYNC_MODES = ("fp32", "int8")


@dataclass(frozen=True)
class DistributedOptions:
    """How this device takes part in a group.

    A coordinator sets ``listen`` and ``shards`` (devices in the group, itself
    included); a worker sets ``connect``, ``rank`` and ``shards``. ``key`` is
    this device's key pair file (``edgelut keygen``); the coordinator admits
    only the public keys in ``allowed_keys`` and a worker checks the
    coordinator against ``server_key`` (a key or a ``.pub`` file). ``insecure``
    turns CURVE off (plain text, anyone on the network may join).
    """

    listen: str = ""
    connect: str = ""
    shards: int = 0
    rank: int = 0
    key: str = ""
    allowed_keys: str = ""
    server_key: str = ""
    insecure: bool = False
    timeout: float = 5.0  # seconds a silent peer is given before it counts as gone
    wait: float = 60.0  # seconds to wait for the group to form
    sync: str = "fp32"  # partial sums: fp32, or int8 blocks of 32 with a scale
    libzmq: str = ""  # path of libzmq; "" = the one pyzmq bundles

    def check(self) -> None:
        """Raises ValueError naming the first bad option."""
        if bool(self.listen) == bool(self.connect):
            raise ValueError(
                "a device either listens (coordinator) or connects (worker), not both or neither"
            )
        if not 2 <= self.shards <= 64:
            raise ValueError(f"--shards must be 2..64 devices, got {self.shards}")
        if self.connect and not 1 <= self.rank < self.shards:
            raise ValueError(
                f"--rank must be 1..{self.shards - 1} for a worker of {self.shards}, got {self.rank}"
            )
        if not self.timeout > 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {self.timeout}")
        if not self.wait > 0:
            raise ValueError(f"--wait must be > 0 seconds, got {self.wait}")
        if self.sync not in SYNC_MODES:
            raise ValueError(f"--sync must be one of {', '.join(SYNC_MODES)}, got {self.sync!r}")
        if not self.insecure:
            if not self.key:
                raise ValueError(
                    "CURVE needs this device's key pair (--key NAME.key from edgelut keygen) or --insecure"
                )
            if self.listen and not self.allowed_keys:
                raise ValueError("CURVE needs the workers' public keys (--allowed-keys FILE) or --insecure")
            if self.connect and not self.server_key:
                raise ValueError(
                    "CURVE needs the coordinator's public key (--server-key KEY or FILE.pub) or --insecure"
                )
