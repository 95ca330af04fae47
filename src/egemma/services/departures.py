"""Work stops when its client leaves, on routes where nobody is writing to the client.

A streamed response notices a departed client when a write fails; a non-streamed one (a
summary, a batch of embeddings) would compute for nobody. These watchers poll the request's
``is_disconnected`` four times a second while the work runs.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio

from egemma.engines.base import Disconnected
from egemma.errors import ClientLeftError

POLL_SECONDS = 0.25  # as Run.final polls (services/generation.py)
T = TypeVar("T")


@asynccontextmanager
async def stop_when_gone(
    is_disconnected: Disconnected | None, cancel: threading.Event
) -> AsyncIterator[None]:
    """Set ``cancel`` (a generation's stop flag) once the client has left, while the body runs."""
    if is_disconnected is None:
        yield
        return
    check = is_disconnected

    async def watch() -> None:
        while not cancel.is_set():
            if await check():
                cancel.set()
                return
            await anyio.sleep(POLL_SECONDS)

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            yield
        finally:
            group.cancel_scope.cancel()


async def unless_gone(is_disconnected: Disconnected | None, work: Callable[[], Awaitable[T]]) -> T:
    """``await work()``, cancelled if the client leaves first (then ``ClientLeftError``)."""
    if is_disconnected is None:
        return await work()
    check = is_disconnected
    left = False
    result: list[T] = []

    async with anyio.create_task_group() as group:

        async def watch() -> None:
            nonlocal left
            while not await check():  # noqa: ASYNC110 - is_disconnected can only be polled
                await anyio.sleep(POLL_SECONDS)
            left = True
            group.cancel_scope.cancel()

        async def run() -> None:
            result.append(await work())
            group.cancel_scope.cancel()

        group.start_soon(watch)
        group.start_soon(run)
    if left and not result:
        raise ClientLeftError
    return result[0]
