"""The network harness of the tensor-parallel tests and tools/bench_tp.py (tools/netlab.py).

Hosts are network namespaces on a veth bridge; `tc tbf` limits the rate.
This kernel has no sch_netem, so `tc netem` cannot add delay: a user-space
relay (tools/delay_relay.py) holds each chunk for the delay in each
direction. These tests check the harness itself: the round trip through the
relay is about twice the one-way delay, a tbf link carries its rate, and
nothing is left behind. They need root (ip netns) and skip without it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import netlab  # noqa: E402

pytestmark = pytest.mark.skipif(netlab.available() is not None, reason=str(netlab.available()))

# Counts what arrives and prints the rate (tbf); the round trips use netlab's echo pair.
SERVER = r"""
import socket, sys, time
host = sys.argv[1]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
n, t0 = 0, None
while d := c.recv(1 << 16):
    t0 = t0 or time.monotonic()
    n += len(d)
print(n, time.monotonic() - t0, flush=True)
"""

CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
c.sendall(b"\0" * int(sys.argv[3])); c.shutdown(socket.SHUT_WR); c.recv(1)
"""


def _server(lab: netlab.NetLab) -> tuple[subprocess.Popen, int]:
    p = lab.popen(0, [sys.executable, "-c", SERVER, lab.addr(0)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    return p, int(p.stdout.readline())


def test_relay_rtt_is_twice_the_one_way_delay():
    with netlab.NetLab(2) as lab:
        # The fastest of 100: a busy machine only adds to some round trips, and the relay
        # can never make one shorter than its delay.
        base = lab.echo_rtt(1, 0.0, stat="min")
        delayed = lab.echo_rtt(1, 2.0, stat="min")
    # The relay adds the delay once in each direction; the rest is the (loaded) machine.
    assert base < 0.002, f"RTT straight over the veth is {base * 1e3:.2f} ms"
    assert 0.0038 < delayed < 0.0040 + base + 0.0015, f"RTT with 2 ms each way is {delayed * 1e3:.2f} ms"


def test_tbf_limits_the_rate():
    with netlab.NetLab(2, rate_mbit=40) as lab:
        server, port = _server(lab)
        n = 3_000_000
        lab.run(1, [sys.executable, "-c", CLIENT, lab.addr(0), str(port), str(n)], timeout=60, check=True)
        got, seconds = server.communicate(timeout=30)[0].split()
    mbit = int(got) * 8 / float(seconds) / 1e6
    assert int(got) == n
    assert 30 < mbit < 44, f"a 40 Mbit/s tbf link carried {mbit:.1f} Mbit/s"


def test_everything_is_torn_down():
    with netlab.NetLab(3, rate_mbit=100) as lab:
        names = [lab.hub, *lab.namespaces]
        p = lab.popen(1, ["sleep", "60"])
        time.sleep(0.1)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    assert not [n for n in names if n in listed]
    assert p.poll() is not None


def test_failed_build_leaves_nothing():
    lab = netlab.NetLab(2)
    lab.namespaces[1] = "bad/name"  # ip refuses it: the build fails after the hub and host 0
    with pytest.raises(RuntimeError, match="ip netns add bad/name"), lab:
        pass
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    assert lab.hub not in listed and lab.namespaces[0] not in listed
