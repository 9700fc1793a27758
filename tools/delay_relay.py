"""A TCP relay that delays every byte by a fixed time in each direction (user-space link delay).

The kernel here has no sch_netem, so link delay cannot come from `tc netem`;
this relay sits between a client and a server (typically in the client's
network namespace) and holds each chunk it reads for DELAY milliseconds
before writing it on, in both directions. Chunks are pipelined (each is
timestamped on arrival and sent when due), so the delay does not cap the
throughput; a rate limit comes from `tc tbf`.

    python delay_relay.py --listen 127.0.0.1:0 --target 10.0.0.1:5555 --delay-ms 0.5

prints "ready PORT" once listening and relays connections until killed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import heapq
import os
import selectors
import socket
import sys
import time

CHUNK = 1 << 16


class _Relay:
    """One thread, one selector: the fewest wake-ups between a byte's arrival and its send,
    which matters on a loaded machine (a thread hand-off per chunk added milliseconds)."""

    def __init__(self, srv: socket.socket, target: tuple[str, int], delay: float) -> None:
        # select(2) takes microseconds; epoll rounds a 0.5 ms wait up to whole milliseconds and more.
        self.sel = selectors.SelectSelector()
        self.sel.register(srv, selectors.EVENT_READ, None)
        self.srv, self.target, self.delay = srv, target, delay
        self.peer: dict[socket.socket, socket.socket] = {}
        self.out: dict[socket.socket, collections.deque[tuple[float, bytes]]] = {}
        self.due: list[tuple[float, int, socket.socket]] = []  # (when, seq, destination)
        self.seq = 0

    def _accept(self) -> None:
        conn, _ = self.srv.accept()
        try:
            up = socket.create_connection(self.target, timeout=10)
        except OSError as e:
            print(f"relay: cannot reach {self.target[0]}:{self.target[1]}: {e}", file=sys.stderr, flush=True)
            conn.close()
            return
        for s in (conn, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(True)
            self.out[s] = collections.deque()
            self.sel.register(s, selectors.EVENT_READ, None)
        self.peer[conn], self.peer[up] = up, conn

    def _drop(self, s: socket.socket) -> None:
        for x in (s, self.peer.get(s)):
            if x is None or x not in self.peer:
                continue
            self.sel.unregister(x)
            x.close()
            del self.peer[x]
            self.out.pop(x, None)

    def _read(self, s: socket.socket) -> None:
        try:
            data = s.recv(CHUNK)
        except OSError:
            data = b""
        if not data:
            self._flush(self.peer[s], force=True)
            self._drop(s)
            return
        dst = self.peer[s]
        when = time.monotonic() + self.delay
        self.out[dst].append((when, data))
        self.seq += 1
        heapq.heappush(self.due, (when, self.seq, dst))

    def _flush(self, dst: socket.socket, force: bool = False) -> None:
        q = self.out.get(dst)
        now = time.monotonic()
        try:
            while q and (force or q[0][0] <= now):
                dst.sendall(q.popleft()[1])
        except OSError:
            self._drop(dst)

    def run(self) -> None:
        while True:
            timeout = None
            if self.due:
                timeout = max(0.0, self.due[0][0] - time.monotonic())
            for key, _ in self.sel.select(timeout):
                if key.fileobj is self.srv:
                    self._accept()
                elif key.fileobj in self.peer:
                    self._read(key.fileobj)  # type: ignore[arg-type]
            now = time.monotonic()
            while self.due and self.due[0][0] <= now:
                _, _, dst = heapq.heappop(self.due)
                self._flush(dst)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=_addr, required=True, metavar="HOST:PORT")
    p.add_argument("--target", type=_addr, required=True, metavar="HOST:PORT")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay added in each direction")
    args = p.parse_args(argv)
    if args.delay_ms < 0:
        p.error("--delay-ms must be >= 0")
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(args.listen)
    srv.listen(16)
    # The relay stands in for a link, so its timers must fire on time on a loaded machine:
    # real-time priority where the cgroup allows it, else the highest nice (root only;
    # it uses little CPU). Measured at load 20 on 2 cores: a 0.5 ms hop took 3-6 ms without.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, 0, -20)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    print(f"ready {srv.getsockname()[1]}", flush=True)
    _Relay(srv, args.target, args.delay_ms / 1000.0).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
