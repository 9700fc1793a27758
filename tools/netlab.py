"""A throw-away LAN of network namespaces for tests and benchmarks (root only).

Hosts are network namespaces joined to a bridge in a hub namespace by veth
pairs, addressed 10.X.0.1, 10.X.0.2, ... A rate limit is `tc tbf` on both
ends of every host's link. Link delay is not `tc netem` (this kernel has no
sch_netem) but tools/delay_relay.py, a user-space TCP relay started in a
host's namespace, that holds each chunk for the delay in each direction:
a client dials the relay on 127.0.0.1 instead of the server.

    with NetLab(2, rate_mbit=100) as lab:
        server = lab.popen(0, [...listen on lab.addr(0)...])
        port = lab.relay(1, (lab.addr(0), 5555), delay_ms=0.5)
        client = lab.popen(1, [...connect to 127.0.0.1:port...])

Everything (processes, relays, namespaces, links) is removed on exit, also
after an error; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

RELAY = Path(__file__).with_name("delay_relay.py")
_counter = itertools.count()


def available() -> str | None:
    """Why a NetLab cannot be built here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns)"
    for tool in ("ip", "tc"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            return f"`{tool}` (iproute2) is not installed"
    return None


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


# One-byte echo over TCP (NODELAY): the server prints its port, the client the median (or
# the min) of COUNT round trips in seconds.
ECHO_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while d := c.recv(4096):
    c.sendall(d)
"""
ECHO_CLIENT = r"""
import socket, statistics, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rtts = []
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter(); c.sendall(b"x"); c.recv(1); rtts.append(time.perf_counter() - t0)
print(min(rtts) if sys.argv[4] == "min" else statistics.median(rtts), flush=True)
"""


class NetLab:
    """n_hosts namespaces on one bridge; rate_mbit (optional) limits every host's link both ways."""

    def __init__(self, n_hosts: int = 2, rate_mbit: float | None = None) -> None:
        if n_hosts < 1 or n_hosts > 250:
            raise ValueError(f"n_hosts must be in 1..250, got {n_hosts}")
        if rate_mbit is not None and rate_mbit <= 0:
            raise ValueError(f"rate_mbit must be positive, got {rate_mbit}")
        n = next(_counter)
        self.tag = f"el{os.getpid() % 100000}x{n}"
        self.subnet = 10 + (os.getpid() + n) % 200
        self.n_hosts = n_hosts
        self.rate_mbit = rate_mbit
        self.hub = f"{self.tag}h"
        self.namespaces = [f"{self.tag}n{i}" for i in range(n_hosts)]
        self._procs: list[subprocess.Popen] = []
        self._made: list[str] = []

    # -- setup / teardown ----------------------------------------------------------------------
    def __enter__(self) -> NetLab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _build(self) -> None:
        _ip("netns", "add", self.hub)
        self._made.append(self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for i, ns in enumerate(self.namespaces):
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            host_end, hub_end = f"{self.tag}a{i}"[:15], f"{self.tag}b{i}"[:15]
            _ip("link", "add", host_end, "type", "veth", "peer", "name", hub_end)
            _ip("link", "set", host_end, "netns", ns)
            _ip("link", "set", hub_end, "netns", self.hub)
            _ip("-n", ns, "link", "set", host_end, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", self.hub, "link", "set", hub_end, "master", "br0")
            _ip("-n", self.hub, "link", "set", hub_end, "up")
            if self.rate_mbit:
                for where, dev in ((ns, "eth0"), (self.hub, hub_end)):
                    self._tbf(where, dev)

    def _tbf(self, ns: str, dev: str) -> None:
        rate = f"{self.rate_mbit}mbit"
        # A burst of a few ms of traffic (at least 16 KiB) and a queue of 20 ms: the link
        # behaves like a switch port of that speed, not like a policer dropping bursts.
        burst = max(16384, int(self.rate_mbit * 1e6 / 8 * 0.002))
        cmd = [
            "tc",
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            str(burst),
            "latency",
            "20ms",
        ]
        r = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=30)
        if r.returncode:
            raise RuntimeError(f"tc tbf on {ns}/{dev}: {r.stderr.strip()}")

    def close(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.kill()
        for p in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
            for pipe in (p.stdin, p.stdout, p.stderr):
                if pipe is not None:
                    pipe.close()
        self._procs.clear()
        # Deleting a namespace deletes its veth ends (and their peers) and its bridge.
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self._made.clear()

    # -- use -----------------------------------------------------------------------------------
    def addr(self, host: int) -> str:
        return f"10.{self.subnet}.0.{host + 1}"

    def command(self, host: int, argv: list[str]) -> list[str]:
        """argv run inside host's namespace."""
        return ["ip", "netns", "exec", self.namespaces[host], *argv]

    def popen(self, host: int, argv: list[str], **kw: object) -> subprocess.Popen:
        """Starts argv in host's namespace; killed at close()."""
        p = subprocess.Popen(self.command(host, argv), **kw)  # type: ignore[call-overload]
        self._procs.append(p)
        return p

    def run(self, host: int, argv: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(host, argv), timeout=timeout, **kw)  # type: ignore[call-overload]

    def wait_port(self, host: int, target: tuple[str, int], timeout: float = 60.0) -> None:
        """Waits until target accepts TCP connections as seen from host (RuntimeError after timeout)."""
        probe = f"import socket; socket.create_connection(({target[0]!r}, {target[1]}), timeout=1).close()"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.run(host, [sys.executable, "-c", probe], timeout=30, capture_output=True).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"nothing listens on {target[0]}:{target[1]} after {timeout:.0f} s")

    def echo_rtt(self, host: int, delay_ms: float, count: int = 100, stat: str = "median") -> float:
        """Median (or "min") round trip (s) of one byte from host to an echo server in host 0.

        Through the delaying relay when delay_ms > 0, straight over the veth otherwise,
        as a tensor-parallel worker in host dials the coordinator: the RTT that the
        all-reduce floor (2 per layer) is measured against.
        """
        server = self.popen(
            0, [sys.executable, "-c", ECHO_SERVER, self.addr(0)], stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None
        port = int(server.stdout.readline())
        target = self.endpoint(host, (self.addr(0), port), delay_ms)
        out = self.run(
            host,
            [sys.executable, "-c", ECHO_CLIENT, target[0], str(target[1]), str(count), stat],
            timeout=60,
            capture_output=True,
            text=True,
            check=True,
        )
        return float(out.stdout)

    def endpoint(self, host: int, target: tuple[str, int], delay_ms: float) -> tuple[str, int]:
        """Where host dials target: through a delaying relay, or straight over the veth at 0 ms.

        At 0 ms a relay would only add a third busy process (Python, on the dialling host's
        CPU) and two socket hops per message; on a 2-core machine it competes with both
        "devices" for the cores, which real devices do not share.
        """
        if delay_ms <= 0:
            return target
        return "127.0.0.1", self.relay(host, target, delay_ms)

    def relay(self, host: int, target: tuple[str, int], delay_ms: float) -> int:
        """Starts a delaying relay in host's namespace to target; returns its port on 127.0.0.1."""
        argv = [sys.executable, str(RELAY), "--listen", "127.0.0.1:0", "--target", f"{target[0]}:{target[1]}"]
        p = self.popen(host, [*argv, "--delay-ms", str(delay_ms)], stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        line = p.stdout.readline()  # bounded: the relay prints at once or exits
        if not line.startswith("ready "):
            raise RuntimeError(f"delay relay did not start (exit status {p.poll()})")
        return int(line.split()[1])
