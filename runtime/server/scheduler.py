"""One model, one generation at a time, requests served in arrival order.

A request first takes a place in the queue (refused at once when the queue
is full, so the client gets a 429 before any streaming starts), then waits
for the model. The generation runs on its own thread and hands its tokens
over a pipe-signalled channel that the event loop reads (``add_reader``), so
the C++ loop never waits for the GIL; the text is made on the event loop.
Whoever stops listening (a client that disconnects, a server shutting down)
cancels the job; the loop checks that after every token, and the model is
handed to the next request only once the thread has really stopped.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from edgelut.model import Completion
from edgelut.server.errors import APIError


class Scheduler:
    """A FIFO of requests in front of one model; at most ``max_waiting`` wait behind the running one."""

    def __init__(self, max_waiting: int, retry_after_s: int = 1, stream_interval_s: float = 0.0) -> None:
        self.max_waiting = max_waiting
        # After the event loop takes tokens from a running generation, it looks
        # again only this much later (0: at once). Each look costs the loop the
        # same whatever it finds, and on a small machine that time comes from
        # the compute threads; the text arrives in a few larger chunks instead.
        self.stream_interval_s = stream_interval_s
        self.retry_after_s = retry_after_s
        self.waiting = 0
        self.served = 0
        self.closing = False
        self._lock: asyncio.Lock | None = None  # made on the event loop's thread
        self._running: Ticket | None = None

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
            self._running.cancel()

    def lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()  # asyncio.Lock wakes its waiters in FIFO order
        return self._lock


class Ticket:
    """One request's place in the queue; ``run`` waits for its turn and streams the job's events."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._s = scheduler
        self._queued = True
        self._cancelled = False
        self._job: Completion | None = None

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
        self._cancelled = True
        if self._job is not None:
            self._job.cancel()

    async def run(self, job: Completion) -> AsyncIterator[tuple[str, Any]]:
        """Events ("text", piece) ... then ("done", stats); a failure of the job is raised."""
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
        self._job = job
        if self._cancelled:
            job.cancel()
        s._running = self
        fd = job.fileno()
        interval = s.stream_interval_s
        done = False

        def watch() -> None:
            if not done:
                loop.add_reader(fd, readable)

        def readable() -> None:
            # Every token that arrived since the last wake-up makes one event: a
            # client gets the same text in fewer, larger chunks when the event
            # loop falls behind the model, instead of the loop falling further
            # behind by sending each piece on its own.
            text = "".join(job.pieces())
            if text:
                events.put_nowait(("text", text))
            if interval > 0:
                loop.remove_reader(fd)
                loop.call_later(interval, watch)

        def ended() -> None:
            # On the event loop, after the thread: the last pieces, then the
            # stats (or the failure); the model is free only now.
            nonlocal done
            done = True
            loop.remove_reader(fd)
            try:
                text = "".join(job.finish())
                if text:
                    events.put_nowait(("text", text))
                events.put_nowait(("done", job.stats))
            except BaseException as e:  # raised again by the consumer below
                events.put_nowait(("error", e))
            finally:
                self._release(lock)

        def thread() -> None:
            try:
                job.run_quietly()
            finally:
                loop.call_soon_threadsafe(ended)

        watch()
        threading.Thread(target=thread, name="edgelut-serve-generate", daemon=True).start()
        try:
            while True:
                kind, value = await events.get()
                if kind == "error":
                    raise value
                if kind == "text":
                    # Text that queued up while the consumer was busy goes out as one piece.
                    later = None
                    while later is None and not events.empty():
                        k2, v2 = events.get_nowait()
                        if k2 == "text":
                            value += v2
                        else:
                            later = (k2, v2)
                    yield kind, value
                    if later is None:
                        continue
                    kind, value = later
                    if kind == "error":
                        raise value
                yield kind, value
                if kind == "done":
                    return
        finally:
            self.cancel()

    def _release(self, lock: asyncio.Lock) -> None:
        self._s._running = None
        self._s.served += 1
        lock.release()
