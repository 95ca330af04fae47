"""Run one generation: wait for the model's FIFO, generate in a worker thread, stream tokens back.

The worker thread checks a ``threading.Event`` before every token; cancelling the asyncio side
alone would not stop the C loop (reliability.md §1). Every exit path sets the event.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from egemma.engines.base import GeneratedToken, SamplingParams, Turn
from egemma.engines.llamacpp import GenerationStats
from egemma.engines.queue import (
    ClientGoneError,
    QueueClosedError,
    QueueFullError,
    QueueTimeoutError,
)
from egemma.errors import InvalidRequestError, UnavailableError
from egemma.services.context import ToolMode
from egemma.services.prompting import PromptPlan, prompter_for

Disconnected = Callable[[], Awaitable[bool]]

_DONE = object()


class ClientLeftError(Exception):
    """The client went away while waiting; nothing is sent."""


async def admit(engine: Any, is_disconnected: Disconnected | None) -> None:
    """Wait in the engine's FIFO: draining, full queue or too long a wait → 503 with
    ``Retry-After``; a client gone while waiting → ``ClientLeftError``."""
    try:
        await engine.queue.acquire(is_disconnected)
    except QueueClosedError:
        raise UnavailableError(
            "The server is shutting down.", retry_after=5, code="draining"
        ) from None
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


@asynccontextmanager
async def model_slot(engine: Any, is_disconnected: Disconnected | None) -> AsyncIterator[None]:
    """Hold the engine's slot for the block (see ``admit``)."""
    await admit(engine, is_disconnected)
    try:
        yield
    finally:
        engine.queue.release()


async def stream_tokens(
    engine: Any,
    plan: PromptPlan,
    params: SamplingParams,
    cancel: threading.Event,
    stats: GenerationStats,
) -> AsyncIterator[GeneratedToken]:
    """Tokens from a worker thread, as they are produced. Caller must hold the model slot."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (shutdown): stop generating
            cancel.set()

    def worker() -> None:
        try:
            for token in engine.generate(plan.tokens, params, cancel, stats, plan.json_schema):
                put(token)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(exc)
        finally:
            put(_DONE)

    future = loop.run_in_executor(getattr(engine, "executor", None), worker)
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


def check_context(engine: Any, plan: PromptPlan, max_tokens: int | None, default: int) -> int:
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


@dataclass
class CompletionResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def plain_plan(engine: Any, turns: Sequence[Turn], family: str, data_dir: Any) -> PromptPlan:
    prompter = prompter_for(engine, family, data_dir)
    return prompter.plan(
        turns, instructions=None, tool_mode=ToolMode("none", ()), effort="low", text=None
    )


async def count_prompt_tokens(
    engine: Any, turns: Sequence[Turn], *, family: str = "auto", data_dir: Any = None
) -> int:
    return len(plain_plan(engine, turns, family, data_dir).tokens)


async def complete_text(
    engine: Any,
    turns: list[Turn],
    *,
    max_tokens: int,
    temperature: float,
    is_disconnected: Disconnected | None = None,
    family: str = "auto",
    data_dir: Any = None,
) -> CompletionResult:
    """A whole text answer (summaries): the visible text only, reasoning dropped."""
    plan = plain_plan(engine, turns, family, data_dir)
    budget = check_context(engine, plan, max_tokens, max_tokens)
    params = SamplingParams(
        max_tokens=budget, temperature=temperature, stop_token_ids=plan.stop_token_ids
    )
    parser = plan.make_parser()
    cancel = threading.Event()
    stats = GenerationStats()
    parts: list[str] = []
    async with model_slot(engine, is_disconnected):
        for token_id in plan.prefill:
            parser.feed(GeneratedToken(token_id, ""))
        async for token in stream_tokens(engine, plan, params, cancel, stats):
            parts += [d.text for d in parser.feed(token) if d.kind == "text"]
        parts += [d.text for d in parser.finish() if d.kind == "text"]
    return CompletionResult(
        text="".join(parts).strip(),
        prompt_tokens=stats.prompt_tokens,
        completion_tokens=stats.completion_tokens,
        finish_reason=stats.finish_reason,
    )
