"""One model, one generation at a time, requests served in arrival order.

A request first takes a place in the queue (refused at once when the queue
is full, so the client gets a 429 before any streaming starts), then waits
for the model. The generation runs on its own thread (the C++ loop releases
the GIL while it computes) and hands text pieces to the event loop. Whoever
stops listening (a client that disconnects, a server shutting down) sets the
job's cancel flag; the model checks it after every token, and the model is
handed to the next request only once the thread has really stopped.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from edgelut.server.errors import APIError

# work(emit, cancel) runs on the generation thread and returns the result.
Work = Callable[[Callable[[str], None], threading.Event], Any]


class Scheduler:
    """A FIFO of requests in front of one model; at most ``max_waiting`` wait behind the running one."""

    def __init__(self, max_waiting: int, retry_after_s: int = 1) -> None:
        self.max_waiting = max_waiting
        self.retry_after_s = retry_after_s
        self.waiting = 0
        self.served = 0
        self.closing = False
        self._lock: asyncio.Lock | None = None  # made on the event loop's thread
        self._running: threading.Event | None = None  # the running job's cancel flag

    @property
    def busy(self) -> bool:
        """A generation is running (its thread has not finished)."""
        return self._running is not None

    def reserve(self) -> Ticket:
        """A place in the queue, or a 429 (503 when shutting down) if there is none."""
        if self.closing:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        if self.waiting >= self.max_waiting:
            raise APIError(
                429,
                f"the server is busy: {self.waiting} requests are already waiting; retry later",
                code="queue_full",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self.waiting += 1
        return Ticket(self)

    def shutdown(self) -> None:
        """Refuse new requests and stop the running generation (safe from a signal handler)."""
        self.closing = True
        if self._running is not None:
            self._running.set()

    def lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()  # asyncio.Lock wakes its waiters in FIFO order
        return self._lock


class Ticket:
    """One request's place in the queue; ``run`` waits for its turn and streams the work's events."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._s = scheduler
        self._queued = True
        self._cancel = threading.Event()  # read by the generation after every token

    def _leave_queue(self) -> None:
        if self._queued:
            self._queued = False
            self._s.waiting -= 1

    def cancel(self) -> None:
        """Give up: leave the queue, or stop the generation before its next token.

        Safe to call more than once and after the work finished; whoever stops
        listening calls it (a response that never started streaming included).
        """
        self._leave_queue()
        self._cancel.set()

    async def run(self, work: Work) -> AsyncIterator[tuple[str, Any]]:
        """Events ("text", piece) ... then ("done", result); a failure of the work is raised."""
        s = self._s
        lock = s.lock()
        try:
            await lock.acquire()
        finally:
            self._leave_queue()  # whether we got the model or were cancelled while waiting
        if s.closing:
            lock.release()
            raise APIError(503, "the server is shutting down", code="shutting_down")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = self._cancel
        s._running = cancel

        def post(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        def thread() -> None:
            try:
                post("done", work(lambda piece: post("text", piece), cancel))
            except BaseException as e:  # raised again on the event loop
                post("error", e)
            finally:
                # The model is free only now, whatever became of the listener.
                loop.call_soon_threadsafe(self._release, lock)

        threading.Thread(target=thread, name="edgelut-serve-generate", daemon=True).start()
        try:
            while True:
                kind, value = await events.get()
                if kind == "error":
                    raise value
                yield kind, value
                if kind == "done":
                    return
        finally:
            cancel.set()

    def _release(self, lock: asyncio.Lock) -> None:
        self._s._running = None
        self._s.served += 1
        lock.release()
