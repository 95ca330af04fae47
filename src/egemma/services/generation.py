"""One owner per generation: admission, the drain's registry, metering and release.

``GenerationRunner.start`` admits a request to its model (draining, a full queue or too long a
wait → 503 with ``Retry-After``; a client gone while waiting → ``ClientLeftError``), registers
its stop flag so a drain can end it, meters its events, and returns a ``Run`` whose ``close``
frees the slot in every exit path (the SSE response's own ``finally``, or ``final``'s). The API
only chooses JSON or SSE. ``complete_text`` is the same path for whole-text answers (summaries).

A streamed request whose model must first be loaded (``GenerationRunner.start_streaming``) is
not made to wait for its headers: its run yields ``response.created`` and
``response.in_progress`` at once, then waits for the load (the SSE writer sends keep-alives
meanwhile), then the generation's events. A load or admission that fails then ends the stream
with ``response.failed`` carrying the error's code and message.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from egemma.engines.base import (
    AdmissionClosedError,
    ChatEngine,
    ClientGoneError,
    Disconnected,
    GenerationRequest,
    QueueFullError,
    QueueTimeoutError,
    SamplingParams,
    Slot,
    TokenStream,
)
from egemma.errors import (
    ClientLeftError,
    DrainingError,
    EgemmaError,
    InvalidRequestError,
    UnavailableError,
)
from egemma.lifecycle import Cancel, Generations
from egemma.metrics import Metrics
from egemma.services.departures import stop_when_gone
from egemma.services.models.managed import ManagedChatEngine
from egemma.services.prompting.plan import Prompter, PromptPlan
from egemma.services.prompting.types import NO_TOOLS, Turn, feed_all

Event = dict[str, Any]
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
DISCONNECT_POLL_SECONDS = 0.25


async def admit(
    engine: ChatEngine, is_disconnected: Disconnected | None, keep_alive: float | None = None
) -> Slot:
    """Wait for ``engine``: its refusals become the API's errors, here and nowhere else.
    ``keep_alive`` (a registry-managed model only) applies once the slot is released."""
    try:
        if isinstance(engine, ManagedChatEngine):
            return await engine.admit(is_disconnected, keep_alive)
        return await engine.admit(is_disconnected)
    except AdmissionClosedError:
        raise DrainingError() from None
    except QueueFullError:
        raise UnavailableError(
            f"Model '{engine.name}' is busy: its queue is full. Retry shortly.", retry_after=2
        ) from None
    except QueueTimeoutError:
        raise UnavailableError(
            f"Model '{engine.name}' is busy: waited too long in its queue.", retry_after=5
        ) from None
    except ClientGoneError:
        raise ClientLeftError from None


def generate(
    engine: ChatEngine, plan: PromptPlan, params: SamplingParams, cancel: threading.Event
) -> TokenStream:
    """Start ``plan`` on ``engine`` (the caller holds a slot)."""
    return engine.generate(GenerationRequest(tuple(plan.tokens), params, cancel))


def check_context(
    engine: ChatEngine, plan: PromptPlan, max_tokens: int | None, default: int
) -> int:
    """The output budget: explicit budgets must fit (400), the default shrinks to what is left."""
    room = engine.n_ctx - len(plan.tokens)
    if room <= 0 or (max_tokens is not None and max_tokens > room):
        wanted = len(plan.tokens) + (max_tokens or 1)
        raise InvalidRequestError(
            f"This model's maximum context length is {engine.n_ctx} tokens; the prompt has "
            f"{len(plan.tokens)} tokens and the request needs {wanted}.",
            param="input",
            code="context_length_exceeded",
        )
    return max_tokens if max_tokens is not None else min(default, room)


class Run:
    """An admitted generation: its metered events and the one ``close`` that ends it."""

    def __init__(
        self,
        events: AsyncIterator[Event],
        cancel: Cancel,
        slot: Slot,
        generations: Generations,
    ) -> None:
        self.events = events
        self.cancel = cancel
        self._slot = slot
        self._generations = generations
        self._closed = False

    def close(self) -> None:
        """Stop generating, free the slot, leave the drain's registry. Idempotent."""
        self.cancel.set()
        if not self._closed:
            self._closed = True
            self._slot.release()
            self._generations.discard(self.cancel)

    async def final(self, is_disconnected: Disconnected | None = None) -> Event:
        """Run to the end for a JSON answer: the final response object. A client that hangs
        up stops the generation at once (``ClientLeftError``: nobody reads the answer)."""
        watcher = asyncio.create_task(self._watch(is_disconnected))
        final: Event | None = None
        try:
            async for event in self.events:
                if event["type"] in TERMINAL:
                    final = event["response"]
        finally:
            self.close()
            watcher.cancel()
        if final is None:
            raise ClientLeftError
        return final

    async def _watch(self, is_disconnected: Disconnected | None) -> None:
        if is_disconnected is None:
            return
        while not self.cancel.is_set():
            if await is_disconnected():
                self.cancel.set()
                return
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)


class LateSlot:
    """The slot of a run admitted after its stream began; released once, whenever it comes."""

    def __init__(self) -> None:
        self._slot: Slot | None = None
        self._released = False

    def attach(self, slot: Slot) -> None:
        if self._released:
            slot.release()  # the run ended while it waited for the model
        else:
            self._slot = slot

    def release(self) -> None:
        self._released = True
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()


class GenerationRunner:
    """Starts every streamed generation (Responses and chat completions)."""

    def __init__(self, generations: Generations, metrics: Metrics) -> None:
        self.generations = generations
        self.metrics = metrics

    async def start(
        self,
        engine: ChatEngine,
        events: Callable[[Cancel], AsyncIterator[Event]],
        is_disconnected: Disconnected | None = None,
        keep_alive: float | None = None,
    ) -> Run:
        """Admit, register and meter ``events(cancel)``; the caller must ``close`` the run."""
        if self.generations.draining:
            raise DrainingError()
        try:
            slot = await admit(engine, is_disconnected, keep_alive)
        except ClientLeftError:
            self.metrics.client_left("queued")
            raise
        cancel = Cancel()
        self.generations.add(cancel)
        metered = self.metrics.observe(engine.name, events(cancel))
        return Run(metered, cancel, slot, self.generations)

    def start_streaming(
        self,
        engine: ChatEngine,
        opening: list[Event],
        events: Callable[[Cancel], AsyncIterator[Event]],
        failed: Callable[[EgemmaError], list[Event]],
        is_disconnected: Disconnected | None = None,
        keep_alive: float | None = None,
    ) -> Run:
        """A run that streams ``opening`` before its model is loaded and admitted, then
        ``events(cancel)`` (which must not repeat ``opening``); a refusal on the way is
        ``failed(error)``'s events. The caller must ``close`` the run."""
        if self.generations.draining:
            raise DrainingError()
        cancel, late = Cancel(), LateSlot()
        self.generations.add(cancel)

        async def deferred() -> AsyncIterator[Event]:
            for event in opening:
                yield event
            refusal = await self._admit_late(engine, late, cancel, is_disconnected, keep_alive)
            if refusal is None and cancel.is_set() and cancel.reason is not None:
                # The drain stopped it while the model loaded: say so (a client gone hears
                # nothing).
                refusal = UnavailableError(
                    "The server is shutting down; retry.", retry_after=5, code=cancel.reason
                )
            if refusal is not None:
                for event in failed(refusal):
                    yield event
            elif not cancel.is_set():
                async for event in events(cancel):
                    yield event

        metered = self.metrics.observe(engine.name, deferred())
        return Run(metered, cancel, late, self.generations)

    async def _admit_late(
        self,
        engine: ChatEngine,
        late: LateSlot,
        cancel: Cancel,
        is_disconnected: Disconnected | None,
        keep_alive: float | None,
    ) -> EgemmaError | None:
        """Admit into ``late``; the refusal to report, if any. A client gone while waiting is
        no refusal: its run is cancelled (no reason: nobody to tell) and just ends."""
        try:
            late.attach(await admit(engine, is_disconnected, keep_alive))
        except ClientLeftError:
            self.metrics.client_left("queued")
            cancel.set()
        except EgemmaError as exc:
            return exc
        return None


# --------------------------------------------------------------------------------------------
# Whole-text answers (summaries)
# --------------------------------------------------------------------------------------------


@dataclass
class CompletionResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def plain_plan(prompter: Prompter, turns: Sequence[Turn]) -> PromptPlan:
    """A tool-free, low-effort prompt. Blocking: call off the event loop."""
    return prompter.plan(turns, instructions=None, tool_mode=NO_TOOLS, effort="low", text=None)


async def count_prompt_tokens(prompter: Prompter, turns: Sequence[Turn]) -> int:
    plan = await anyio.to_thread.run_sync(plain_plan, prompter, turns)
    return len(plan.tokens)


async def complete_text(
    engine: ChatEngine,
    prompter: Prompter,
    turns: list[Turn],
    *,
    max_tokens: int,
    temperature: float,
    is_disconnected: Disconnected | None = None,
    keep_alive: float | None = None,
) -> CompletionResult:
    """A whole text answer (summaries): the visible text only, reasoning dropped."""
    plan = await anyio.to_thread.run_sync(plain_plan, prompter, turns)
    budget = check_context(engine, plan, max_tokens, max_tokens)
    params = SamplingParams(
        max_tokens=budget, temperature=temperature, stop_token_ids=plan.stop_token_ids
    )
    parser = plan.make_parser()
    parts: list[str] = []
    slot = await admit(engine, is_disconnected, keep_alive)
    cancel = threading.Event()
    stream = generate(engine, plan, params, cancel)
    try:
        async with stop_when_gone(is_disconnected, cancel):
            feed_all(parser, plan.prefill)
            async for token in stream:
                parts += [d.text for d in parser.feed(token) if d.kind == "text"]
            parts += [d.text for d in parser.finish() if d.kind == "text"]
    finally:
        await stream.aclose()
        slot.release()
    return CompletionResult(
        text="".join(parts).strip(),
        prompt_tokens=stream.stats.prompt_tokens,
        completion_tokens=stream.stats.completion_tokens,
        finish_reason=stream.stats.finish_reason,
    )
