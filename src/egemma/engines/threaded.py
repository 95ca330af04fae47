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


def loop_sink(queue: asyncio.Queue[Any], cancel: threading.Event) -> Callable[[Any], None]:
    """A thread-safe ``put`` onto ``queue`` on the running loop; a loop that is gone (shutdown)
    cancels the generation instead."""
    loop = asyncio.get_running_loop()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:
            cancel.set()

    return put


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
        put = loop_sink(queue, cancel)

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
