"""Graceful shutdown: refuse new work, let generations finish, end the rest with a terminal event.

On SIGTERM (reliability.md §4) the server first reports not-ready (``/ready`` 503 "draining") and
answers new work with 503 + ``Retry-After`` while its listener is still open, turns away requests
waiting for a model, gives in-flight generations ``GRACEFUL_TIMEOUT`` seconds, then stops the
rest: each ends with a final ``response.failed`` (code ``server_shutdown``), never a cut stream.
Only then is Hypercorn told to stop, with a longer grace of its own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from fastapi import Request

from egemma.errors import UnavailableError

log = logging.getLogger(__name__)

SHUTDOWN_CODE = "server_shutdown"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# How long stopped generations get to write their terminal event before Hypercorn takes over.
STOP_WAIT_SECONDS = 5.0


class Cancel(threading.Event):
    """A generation's stop flag. ``reason`` is None when the client left (nobody to tell);
    ``server_shutdown`` when the drain stopped it (the service sends ``response.failed``)."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None

    def stop(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
        self.set()


class Generations:
    """The generations in flight, so a drain can wait for them and stop the stragglers."""

    def __init__(self) -> None:
        self._live: set[Cancel] = set()
        self.started = 0

    def add(self, cancel: Cancel) -> None:
        self._live.add(cancel)
        self.started += 1

    def discard(self, cancel: Cancel) -> None:
        self._live.discard(cancel)

    def __len__(self) -> int:
        return len(self._live)

    def stop_all(self, reason: str = SHUTDOWN_CODE) -> int:
        live = list(self._live)
        for cancel in live:
            cancel.stop(reason)
        return len(live)

    async def wait_idle(self, seconds: float) -> bool:
        """True when none is left within ``seconds``."""
        deadline = time.monotonic() + seconds
        while self._live:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True


def _queues(app: Any) -> list[Any]:
    engines = app.state.engines
    seen: dict[int, Any] = {}
    for engine in [*engines.chat.values(), engines.summary]:
        queue = getattr(engine, "queue", None)
        if queue is not None:
            seen[id(queue)] = queue
    return list(seen.values())


async def drain(app: Any, grace: float) -> None:
    """Refuse new work, wait up to ``grace`` seconds for generations, then stop the rest."""
    app.state.draining = True
    for queue in _queues(app):
        close = getattr(queue, "close", None)
        if callable(close):
            close()
    generations: Generations = app.state.generations
    if len(generations):
        log.info("draining: %d generation(s) in flight, %.1fs grace", len(generations), grace)
    if not await generations.wait_idle(grace):
        stopped = generations.stop_all(SHUTDOWN_CODE)
        log.warning("drain grace over: stopping %d generation(s)", stopped)
        await generations.wait_idle(STOP_WAIT_SECONDS)
    log.info("drained")


def stop_now(app: Any) -> None:
    """A second signal: end every generation at once (each still gets its terminal event)."""
    app.state.draining = True
    app.state.generations.stop_all(SHUTDOWN_CODE)


async def refuse_when_draining(request: Request) -> None:
    """Dependency on every protected route: while draining, new work (any write) gets 503."""
    if request.app.state.draining and request.method not in SAFE_METHODS:
        raise UnavailableError("The server is shutting down.", retry_after=5, code="draining")
