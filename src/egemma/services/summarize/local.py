"""Local summaries: one call when the content fits the model's context, map-reduce otherwise.

Longer content is split by tokens on line boundaries, each part summarised with the same persona,
then the part summaries summarised (in rounds, if they do not fit together either). Token counts
run in worker threads, never on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from egemma.engines.base import ChatEngine, Disconnected
from egemma.errors import (
    ClientLeftError,
    InvalidRequestError,
    PayloadTooLargeError,
    UnavailableError,
)
from egemma.services.generation import complete_text, count_prompt_tokens
from egemma.services.prompting.plan import Prompter
from egemma.services.prompting.types import Turn
from egemma.services.summarize.input import split_by_tokens

if TYPE_CHECKING:
    from egemma.settings import SummarySettings

log = logging.getLogger(__name__)

CONTEXT_MARGIN = 16  # tokens kept free for template differences between count and render
CHUNK_FILL = 0.9  # per-line token counts can undercount the joined text slightly
MIN_CHUNK_TOKENS = 32
MAX_CHARS_PER_TOKEN = 16  # above this many characters per token of room, skip the exact count


@dataclass(frozen=True)
class Job:
    language: str
    text: str
    system: str
    max_tokens: int
    temperature: float


def user_prompt(language: str, text: str, part: tuple[int, int] | None = None) -> str:
    if part is None:
        return f"Here is the {language} content:\n\n{text}"
    return f"Here is part {part[0]} of {part[1]} of the {language} content:\n\n{text}"


def _reduce_prompt(language: str, summaries: list[str], final: bool) -> str:
    body = "\n\n".join(f"### Part {i}\n{s}" for i, s in enumerate(summaries, start=1))
    what = "one summary of the whole" if final else "one combined summary of these parts of the"
    return (
        f"The {language} content was too long to read at once, so it was split into "
        f"consecutive parts and each part was summarised. Combine these part summaries into "
        f"{what} content:\n\n{body}"
    )


class LocalSummary:
    """One local summary: a single call when it fits, map-reduce otherwise. ``on_call`` is
    told of every model call (the service counts them)."""

    def __init__(
        self,
        settings: SummarySettings,
        engine: ChatEngine,
        prompter: Prompter,
        job: Job,
        is_disconnected: Disconnected | None,
        on_call: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.on_call = on_call
        self.engine = engine
        self.prompter = prompter
        self.job = job
        self.is_disconnected = is_disconnected

    async def count(self, user: str) -> int:
        turns = [Turn("system", self.job.system), Turn("user", user)]
        return await count_prompt_tokens(self.prompter, turns)

    async def complete(self, user: str, max_tokens: int) -> str:
        turns = [Turn("system", self.job.system), Turn("user", user)]
        # The queue only checks for a departed client while waiting; map-reduce makes many calls,
        # so stop between them too rather than summarising for nobody.
        if self.is_disconnected is not None and await self.is_disconnected():
            raise UnavailableError("The client disconnected.", code="client_disconnected")
        self.on_call()
        try:
            result = await complete_text(
                self.engine,
                self.prompter,
                turns,
                max_tokens=max_tokens,
                temperature=self.job.temperature,
                is_disconnected=self.is_disconnected,
            )
        except ClientLeftError:
            raise UnavailableError("The client disconnected.", code="client_disconnected") from None
        if result.finish_reason == "cancelled":
            raise UnavailableError("The summary was cancelled.", code="client_disconnected")
        return result.text

    def room(self, overhead: int, max_tokens: int) -> int:
        """Content tokens that fit next to ``overhead`` prompt tokens and the answer."""
        n_ctx: int = self.engine.n_ctx
        return n_ctx - overhead - max_tokens - CONTEXT_MARGIN

    async def run(self) -> tuple[str, int]:
        job = self.job
        n_ctx = self.engine.n_ctx
        if job.max_tokens + CONTEXT_MARGIN >= n_ctx:
            raise InvalidRequestError(
                f"max_tokens {job.max_tokens} leaves no room for content in the model's context "
                f"of {n_ctx} tokens.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        chunk_tokens = self.settings.chunk_tokens
        single = user_prompt(job.language, job.text)
        limit = n_ctx - job.max_tokens - CONTEXT_MARGIN
        if len(single) <= limit * MAX_CHARS_PER_TOKEN:
            total = await self.count(single)
            fits_chunk = chunk_tokens == 0 or total - await self.count("") <= chunk_tokens
            if total <= limit and fits_chunk:
                return await self.complete(single, job.max_tokens), 1
        return await self.map_reduce()

    async def map_reduce(self) -> tuple[str, int]:
        job = self.job
        header = await self.count(user_prompt(job.language, "", (999, 999)))
        budget = int(self.room(header, job.max_tokens) * CHUNK_FILL)
        if self.settings.chunk_tokens:
            budget = min(budget, self.settings.chunk_tokens)
        reduce_overhead = await self.count(_reduce_prompt(job.language, [], True))
        reduce_room = self.room(reduce_overhead, job.max_tokens)
        # Part summaries are kept short enough that at least four fit in one reduce prompt.
        part_tokens = max(16, min(job.max_tokens, reduce_room // 4 - 16))
        if budget < MIN_CHUNK_TOKENS or reduce_room < 2 * (part_tokens + 16):
            raise InvalidRequestError(
                f"max_tokens {job.max_tokens} is too large to summarise long content with a "
                f"context of {self.engine.n_ctx} tokens.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        parts = await anyio.to_thread.run_sync(split_by_tokens, job.text, self._count_raw, budget)
        limit = self.settings.max_chunks
        if len(parts) > limit:
            raise PayloadTooLargeError(
                f"The content needs {len(parts)} parts to fit the model's context; at most "
                f"{limit} are allowed (SUMMARY_MAX_CHUNKS).",
                param="file",
                code="content_too_long",
            )
        log.info("summarising %d parts of %d budget tokens each", len(parts), budget)
        summaries = []
        for i, part in enumerate(parts, start=1):
            user = user_prompt(job.language, part, (i, len(parts)))
            summaries.append(await self.complete(user, part_tokens))
        return await self.reduce(summaries, reduce_room, part_tokens), len(parts)

    async def reduce(self, summaries: list[str], room: int, part_tokens: int) -> str:
        """Combine part summaries, in rounds of groups that fit, until one summary is left."""
        job = self.job
        while True:
            sizes = [n + 8 for n in await anyio.to_thread.run_sync(self._count_all, summaries)]
            if sum(sizes) <= room:
                final = _reduce_prompt(job.language, summaries, True)
                return await self.complete(final, job.max_tokens)
            groups: list[list[str]] = [[]]
            used = 0
            for summary, size in zip(summaries, sizes, strict=True):
                if groups[-1] and used + size > room:
                    groups.append([])
                    used = 0
                groups[-1].append(summary)
                used += size
            if len(groups) >= len(summaries):  # no progress possible: never loop forever
                raise InvalidRequestError(
                    "The part summaries do not fit the model's context; lower max_tokens.",
                    param="max_tokens",
                    code="context_length_exceeded",
                )
            summaries = [
                await self.complete(_reduce_prompt(job.language, group, False), part_tokens)
                for group in groups
            ]

    def _count_raw(self, text: str) -> int:
        """Blocking: only from worker threads."""
        return len(self.engine.tokenize(text, special=False))

    def _count_all(self, texts: list[str]) -> list[int]:
        return [self._count_raw(text) for text in texts]
