"""A blocking token loop in a worker thread, read as an async stream (the ``TokenStream`` engines
hand out).

The worker checks the request's ``threading.Event`` before every token: cancelling the asyncio
side alone would not stop a C loop (reliability.md §1). Ending or closing the stream sets it.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any

from egemma.engines.base import GeneratedToken, GenerationRequest, GenerationStats

_DONE = object()

Producer = Callable[[GenerationRequest, GenerationStats], Iterator[GeneratedToken]]


class LazyTokenStream(ABC):
    """One generation's tokens: started when iteration starts (``_run``), cancelled on close.
    Every engine's stream is one of these."""

    def __init__(self, request: GenerationRequest, stats: GenerationStats | None = None) -> None:
        self._request = request
        self.stats = stats if stats is not None else GenerationStats()
        self._iterator: AsyncIterator[GeneratedToken] | None = None

    def __aiter__(self) -> AsyncIterator[GeneratedToken]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    async def aclose(self) -> None:
        self._request.cancel.set()
        if self._iterator is not None:
            await self._iterator.aclose()  # type: ignore[attr-defined]

    @abstractmethod
    def _run(self) -> AsyncIterator[GeneratedToken]:
        """The token loop (an async generator)."""


class LoopSink:
    """A thread-safe ``put`` onto ``queue`` on the running loop; a loop that is gone (shutdown)
    cancels the generation instead."""

    def __init__(self, queue: asyncio.Queue[Any], cancel: threading.Event) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue = queue
        self.cancel = cancel

    def __call__(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            self.cancel.set()


class Outbox:
    """Items for several ``LoopSink``s, handed over together by ``flush``: one wake-up of each
    event loop per batch, however many streams it carries (a thread-safe call costs the loop a
    wake-up and a self-pipe write each). Only the thread that fills it may use it."""

    def __init__(self) -> None:
        self._items: dict[asyncio.AbstractEventLoop, list[tuple[LoopSink, Any]]] = {}

    def bind(self, sink: LoopSink) -> Callable[[Any], None]:
        """A ``put`` that goes out with the next ``flush``."""
        return lambda item: self._items.setdefault(sink.loop, []).append((sink, item))

    def flush(self) -> None:
        items, self._items = self._items, {}
        for loop, batch in items.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:
                for sink, _item in batch:
                    sink.cancel.set()


def _deliver(batch: list[tuple[LoopSink, Any]]) -> None:
    for sink, item in batch:
        sink.queue.put_nowait(item)


class ThreadedTokenStream(LazyTokenStream):
    """Runs ``produce(request, stats)`` on ``executor`` once iteration starts."""

    def __init__(
        self, produce: Producer, request: GenerationRequest, executor: Executor | None = None
    ) -> None:
        super().__init__(request)
        self._produce = produce
        self._executor = executor

    async def _run(self) -> AsyncIterator[GeneratedToken]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = self._request.cancel
        put = LoopSink(queue, cancel)

        def worker() -> None:
            try:
                for token in self._produce(self._request, self.stats):
                    put(token)
            except BaseException as exc:  # handed to the consumer, which raises it
                put(exc)
            finally:
                put(_DONE)

        future = loop.run_in_executor(self._executor, worker)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            if not future.done():
                future.add_done_callback(lambda f: f.exception())
