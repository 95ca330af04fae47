"""Background responses: ``background: true`` answers at once and generates in a server task.

The task's events are written to the store (``BackgroundStore``) as they happen, batched every
``POLL_SECONDS``; the same write refreshes the run's heartbeat and reads whether a cancel was
requested, so ``POST /v1/responses/{id}/cancel`` on any replica sharing the store stops the
generation before its next token (within one poll). Any replica answers ``GET`` polls from the
stored response and resumes the stream from the stored events. A run whose heartbeat stopped
(its process died) is marked ``failed`` at the next start or the next read of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from egemma.services.generation import TERMINAL, Event, Run
from egemma.services.responses.service import Prepared, ResponsesService
from egemma.store.base import Item, Store

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
STALE_SECONDS = 10.0  # a heartbeat this old means the process running it is gone
LIVE = ("queued", "in_progress")


class BackgroundResponses:
    """Starts background runs and keeps the asyncio tasks alive until they end."""

    def __init__(self, service: ResponsesService, store: Store) -> None:
        self.service = service
        self.store = store
        self._tasks: set[asyncio.Task[None]] = set()

    async def launch(self, p: Prepared) -> dict[str, Any]:
        """Store the queued response and its run, start the task; the queued response."""
        response = p.builder.response
        response["background"] = True
        response["status"] = "queued"
        await p.records.responses.save(response, p.context.new_items)
        await self.store.background.begin(response["id"])
        answer = p.builder.snapshot()
        response["status"] = "in_progress"
        task = asyncio.create_task(self._drive(p))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return answer

    async def close(self) -> None:
        """Shutdown: stop the runs still going; each stores itself as failed."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _drive(self, p: Prepared) -> None:
        task = _Task(self.service, self.store, p)
        poller = asyncio.create_task(task.poll())
        try:
            status, error = await task.generate()
        except asyncio.CancelledError:
            await task.end("failed", _SHUTDOWN, poller)
            raise
        except Exception as exc:
            log.exception("background response %s failed", task.rid)
            body = getattr(exc, "body", None)
            error = {"code": getattr(exc, "code", None) or "server_error", "message": str(exc)}
            await task.end("failed", body if isinstance(body, dict) else error, poller)
            return
        await task.end(status, error, poller)


class _Task:
    """One background run: its events not yet written, and the cancel flag read back."""

    def __init__(self, service: ResponsesService, store: Store, p: Prepared) -> None:
        self.service = service
        self.store = store
        self.p = p
        self.rid: str = p.builder.response["id"]
        self.pending: list[Event] = []
        self.sent = 0  # events written
        self.numbered = 0  # events stamped with their sequence_number
        self.cancelled = asyncio.Event()
        self.finished = asyncio.Event()
        self.run: Run | None = None

    def stamp(self, event: Event) -> None:
        event["sequence_number"] = self.numbered
        self.numbered += 1
        self.pending.append(event)

    async def flush(self) -> None:
        batch, self.pending = self.pending, []
        try:
            cancel = await self.store.background.tick(self.rid, self.sent, batch)
        except BaseException:
            self.pending = batch + self.pending  # written next time, in order
            raise
        self.sent += len(batch)
        if cancel:
            self.cancelled.set()
            if self.run is not None:
                self.run.cancel.set()  # the engine stops before its next token

    async def poll(self) -> None:
        """Every ``POLL_SECONDS`` until ``end``: write the new events, read the cancel flag.
        Never cancelled mid-write (the last write is ``end``'s, after this returns)."""
        while not self.finished.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.finished.wait(), POLL_SECONDS)
            if self.finished.is_set():
                return
            try:
                await self.flush()
            except Exception as exc:  # the store is away: keep generating, retry next tick
                log.warning("background %s: could not write its events: %s", self.rid, exc)

    async def generate(self) -> tuple[str | None, dict[str, Any] | None]:
        """Admit and run; the status to store at the end (None: the run stored its own)."""
        start = asyncio.ensure_future(self.service.start(self.p))
        stop = asyncio.ensure_future(self.cancelled.wait())
        await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not start.done():  # cancelled while queued for the model
            start.cancel()
            return "cancelled", None
        self.run = run = start.result()
        terminal = False
        try:
            if self.cancelled.is_set():
                return "cancelled", None
            # Admitted: polls now see in_progress (the model's slot is held).
            await self.p.records.responses.save(self.p.builder.response, self.p.context.new_items)
            async for event in run.events:
                self.stamp(event)
                terminal = terminal or event["type"] in TERMINAL
        finally:
            run.close()
        if terminal:
            return None, None
        if self.cancelled.is_set():
            return "cancelled", None
        return "failed", _SHUTDOWN

    async def end(
        self, status: str | None, error: dict[str, Any] | None, poller: asyncio.Task[None]
    ) -> None:
        """Write the last events and the final response, then mark the run done."""
        self.finished.set()
        with contextlib.suppress(Exception):
            await poller
        response = self.p.builder.response
        if status is not None:
            response["status"] = status
            if error is not None:
                response["error"] = error
            for item in response["output"]:
                if item.get("status") == "in_progress":
                    item["status"] = "incomplete"
            kind = "response.failed" if status == "failed" else "response.cancelled"
            self.stamp({"type": kind, "response": self.p.builder.snapshot()})
        try:
            await self.flush()
            # A completed run stored itself; a failed one did not: store every end (idempotent).
            await self.p.records.responses.save(response, self.p.context.new_items)
            await self.store.background.finish(self.rid)
        except Exception as exc:
            log.error("background response %s: could not store its end: %s", self.rid, exc)


_SHUTDOWN = {
    "code": "server_shutdown",
    "message": "The server stopped while this background response was running.",
}
_ABANDONED = {
    "code": "server_error",
    "message": "The server running this background response stopped before it finished.",
}


async def reap(store: Store, response_id: str | None = None) -> int:
    """Mark runs whose process is gone (stale heartbeat) as failed; with ``response_id``, only
    that run. Returns how many were marked."""
    stale = await store.background.abandoned(time.time() - STALE_SECONDS)
    if response_id is not None:
        stale = [r for r in stale if r == response_id]
    for rid in stale:
        found = await store.responses.get(rid)
        if found is not None and found[0].get("status") in LIVE:
            response, inputs = found
            response["status"] = "failed"
            response["error"] = _ABANDONED
            await store.responses.save(response, inputs)
            events, _ = await store.background.events_after(rid, -1)
            last = {"type": "response.failed", "response": response}
            await store.background.tick(rid, len(events), [last | {"sequence_number": len(events)}])
        await store.background.finish(rid)
        log.warning("background response %s was abandoned by a stopped server: failed", rid)
    return len(stale)


async def follow(store: Store, response_id: str, after: int) -> AsyncIterator[Item]:
    """The stored events after ``after``, then the new ones as they are written, until the run
    is done (whichever replica runs it)."""
    while True:
        events, done = await store.background.events_after(response_id, after)
        for event in events:
            after = int(event["sequence_number"])
            yield event
        if done:
            return
        await asyncio.sleep(POLL_SECONDS)
        if await reap(store, response_id):
            continue
