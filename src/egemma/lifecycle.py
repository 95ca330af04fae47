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
from collections.abc import Iterable

from egemma.engines.base import ChatEngine

log = logging.getLogger(__name__)

SHUTDOWN_CODE = "server_shutdown"
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
    """The generations in flight, so a drain can wait for them and stop the stragglers; and
    whether the server is draining (the one flag every layer reads)."""

    def __init__(self) -> None:
        self._live: set[Cancel] = set()
        self.started = 0
        self.draining = False

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


async def drain(generations: Generations, engines: Iterable[ChatEngine], grace: float) -> None:
    """Refuse new work, wait up to ``grace`` seconds for generations, then stop the rest."""
    generations.draining = True
    for engine in engines:
        engine.close_admission()
    if len(generations):
        log.info("draining: %d generation(s) in flight, %.1fs grace", len(generations), grace)
    if not await generations.wait_idle(grace):
        stopped = generations.stop_all(SHUTDOWN_CODE)
        log.warning("drain grace over: stopping %d generation(s)", stopped)
        await generations.wait_idle(STOP_WAIT_SECONDS)
    log.info("drained")


def stop_now(generations: Generations) -> None:
    """A second signal: end every generation at once (each still gets its terminal event)."""
    generations.draining = True
    generations.stop_all(SHUTDOWN_CODE)
