"""A bounded FIFO in front of one model context: ``capacity`` holders (one for a llama.cpp
context; a remote engine may send several at once), at most ``max_waiting`` waiters.

Full → ``QueueFullError`` at once (the API answers 503 + Retry-After). A waiter whose client
has left is dropped within one poll interval and never takes the slot (llama.cpp #13262;
Ollama's scheduler skips cancelled requests the same way). ``admit`` hands out a ``QueueSlot``
lease; chat engines expose it as ``ChatEngine.admit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

from egemma.engines.base import (
    AdmissionClosedError,
    AdmissionStats,
    ClientGoneError,
    Disconnected,
    QueueFullError,
    QueueTimeoutError,
)

POLL_SECONDS = 0.25


class QueueSlot:
    """The lease ``ModelQueue.admit`` hands out; releasing it twice releases once."""

    def __init__(self, queue: ModelQueue) -> None:
        self._queue: ModelQueue | None = queue

    def release(self) -> None:
        queue, self._queue = self._queue, None
        if queue is not None:
            queue.release()


class ModelQueue:
    def __init__(self, max_waiting: int, timeout: float, capacity: int = 1) -> None:
        self.max_waiting = max_waiting
        self.timeout = timeout
        self.capacity = max(1, capacity)
        self._held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.admitted = 0
        self.rejected = 0
        self.abandoned = 0
        self.closed = False

    @property
    def busy(self) -> bool:
        return self._held > 0

    @property
    def holders(self) -> int:
        return self._held

    @property
    def depth(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def stats(self) -> AdmissionStats:
        return AdmissionStats(self.depth, self.busy, self.admitted, self.rejected, self.abandoned)

    async def admit(self, is_disconnected: Disconnected | None = None) -> QueueSlot:
        await self.acquire(is_disconnected)
        return QueueSlot(self)

    async def acquire(self, is_disconnected: Disconnected | None = None) -> None:
        if self.closed:
            raise AdmissionClosedError
        if self._held < self.capacity and not self.depth:
            self._held += 1
            self.admitted += 1
            return
        if self.depth >= self.max_waiting:
            self.rejected += 1
            raise QueueFullError
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(waiter), POLL_SECONDS)
                    self.admitted += 1
                    return
                except TimeoutError:
                    pass
                if is_disconnected is not None and await is_disconnected():
                    self.abandoned += 1
                    raise ClientGoneError
                if time.monotonic() > deadline:
                    self.rejected += 1
                    raise QueueTimeoutError
        except BaseException:
            self._give_up(waiter)
            raise

    def _give_up(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            # The slot was handed to us just as we left: pass it on.
            self.release()
        else:
            waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def close(self) -> None:
        """Drain: turn away every waiter and every later caller; the holder keeps its slot."""
        self.closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(AdmissionClosedError())

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # ownership passes directly to the next waiter
                return
        self._held = max(0, self._held - 1)
