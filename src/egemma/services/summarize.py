"""Summaries: upload checks, persona prompt, cache, then Gemini or the local model.

Local content longer than the model's context is summarised map-reduce: split by tokens on line
boundaries, each part summarised with the same persona, then the part summaries summarised
(in rounds, if they do not fit together either). The answer says how many parts there were.

Cache: ``TwoLevelCache`` (LRU + ``diskcache`` under ``DATA_DIR/cache/summaries``), keyed by the
content hash, persona (name and rendered prompt), model identity and every generation
parameter. Only real summaries are stored: a failure raises and is never cached (the original
cached Gemini error texts as summaries).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from egemma.cache import TwoLevelCache, cache_key
from egemma.engines.base import Turn
from egemma.errors import InvalidRequestError, PayloadTooLargeError, UnavailableError
from egemma.personas import PersonaRegistry, kind_for_language
from egemma.runtime import Engines
from egemma.services.generation import ClientLeftError, complete_text, count_prompt_tokens
from egemma.services.summary_input import (
    LOG_LANGUAGE,
    condense_log,
    decode_upload,
    language_for,
    split_by_tokens,
)
from egemma.settings import Settings

log = logging.getLogger(__name__)

Disconnected = Callable[[], Awaitable[bool]]

CACHE_VERSION = 1
LOCAL_DISABLED_MESSAGE = (
    "Local summarization is disabled. Please specify a Gemini model "
    "(e.g., model_name='gemini-2.5-flash')."
)
CONTEXT_MARGIN = 16  # tokens kept free for template differences between count and render
CHUNK_FILL = 0.9  # per-line token counts can undercount the joined text slightly
MIN_CHUNK_TOKENS = 32
MAX_CHARS_PER_TOKEN = 16  # above this many characters per token of room, skip the exact count


@dataclass(frozen=True)
class SummaryRequest:
    """One ``/summarize`` call, as the router read it (``data`` may hold one byte too many)."""

    filename: str | None
    data: bytes
    persona: str | None = None
    model_name: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    enable_safety: bool = False
    goal: str | None = None


@dataclass(frozen=True)
class SummaryResult:
    language: str
    summary: str
    model: str
    cached: bool
    chunks: int

    def body(self) -> dict[str, Any]:
        return {
            "language": self.language,
            "summary": self.summary,
            "model": self.model,
            "cached": self.cached,
            "chunks": self.chunks,
        }


@dataclass(frozen=True)
class _Job:
    language: str
    text: str
    system: str
    max_tokens: int
    temperature: float


def is_gemini(model_name: str | None) -> bool:
    return bool(model_name) and str(model_name).strip().lower().startswith("gemini")


class SummarizeService:
    """Turns an upload into a summary; one per app, created on first use."""

    def __init__(
        self,
        settings: Settings,
        engines: Engines,
        registry: PersonaRegistry,
        cache: TwoLevelCache,
    ) -> None:
        self.settings = settings
        self.engines = engines
        self.registry = registry
        self.cache = cache
        self.model_calls = 0

    @classmethod
    def create(
        cls, settings: Settings, engines: Engines, registry: PersonaRegistry
    ) -> SummarizeService:
        cache = TwoLevelCache(
            "summaries",
            settings.server.data_dir / "cache" / "summaries",
            settings.summary.cache_max_size,
            settings.summary.disk_cache_bytes,
        )
        return cls(settings, engines, registry, cache)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.cache.close)

    # -- the request --------------------------------------------------------------------------

    async def summarize(
        self, request: SummaryRequest, is_disconnected: Disconnected | None = None
    ) -> SummaryResult:
        server = self.settings.server
        text = decode_upload(
            request.data,
            max_bytes=server.max_file_size_bytes,
            binary_threshold=server.binary_detection_threshold,
        )
        language = language_for(request.filename)
        if language == LOG_LANGUAGE:
            text = await anyio.to_thread.run_sync(condense_log, text)
        max_tokens = request.max_tokens or self.settings.summary.max_token
        temperature = (
            request.temperature if request.temperature is not None else self.settings.summary.temp
        )
        kind = kind_for_language(language)
        persona = (request.persona or "").strip() or (
            "assistant" if kind == "docs" else "developer"
        )
        system = self.registry.render(
            persona, kind, language=language, max_tokens=max_tokens, goal=request.goal
        )
        job = _Job(language, text, system, max_tokens, temperature)
        if is_gemini(request.model_name):
            model = str(request.model_name).strip()
            backend = self._gemini()
            identity: dict[str, Any] = {"backend": "gemini", "model": model}
            extra: dict[str, Any] = {"enable_safety": request.enable_safety}
        else:
            engine = self._local()
            model = engine.name
            identity = {"backend": "llama", "model": engine.name, "path": str(engine.path)}
            extra = {"n_ctx": engine.n_ctx, "chunk_tokens": self.settings.summary.chunk_tokens}
        key = cache_key(
            kind="summary",
            version=CACHE_VERSION,
            content=hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
            language=language,
            persona=persona,
            system=hashlib.sha256(system.encode("utf-8")).hexdigest(),
            max_tokens=max_tokens,
            temperature=temperature,
            **identity,
            **extra,
        )
        hit = await anyio.to_thread.run_sync(self.cache.get, key)
        if isinstance(hit, dict) and isinstance(hit.get("summary"), str):
            return SummaryResult(language, hit["summary"], hit["model"], True, hit["chunks"])
        if is_gemini(request.model_name):
            summary, chunks = await self._run_gemini(backend, model, job, request.enable_safety)
        else:
            summary, chunks = await self._run_local(engine, job, is_disconnected)
        if summary:
            value = {"summary": summary, "model": model, "chunks": chunks}
            await anyio.to_thread.run_sync(self.cache.set, key, value)
        return SummaryResult(language, summary, model, False, chunks)

    # -- backends -----------------------------------------------------------------------------

    def _gemini(self) -> Any:
        backend = self.engines.gemini
        if backend is not None:
            return backend
        if self.settings.gemini.api_key is None:
            # Not configured is a property of this server, not a passing state: 400, no retry.
            raise InvalidRequestError(
                "Gemini is not configured on this server (GEMINI_API_KEY is not set). "
                "Use the local model (omit model_name) or ask the operator to set the key.",
                param="model_name",
                code="gemini_not_configured",
            )
        status = self.engines.capability("gemini")
        raise UnavailableError(
            f"The Gemini backend is not available ({status.reason or status.status}).",
            code="model_not_loaded",
        )

    def _local(self) -> Any:
        if not self.settings.summary.local_enabled:
            raise InvalidRequestError(
                LOCAL_DISABLED_MESSAGE, param="model_name", code="local_summarization_disabled"
            )
        engine = self.engines.summary
        if engine is None:
            status = self.engines.capability("local_summarization")
            reason = status.reason or status.status.replace("_", " ")
            raise UnavailableError(
                f"The local summarization model is not available ({reason}).",
                code="model_not_loaded",
            )
        return engine

    async def _run_gemini(
        self, backend: Any, model: str, job: _Job, enable_safety: bool
    ) -> tuple[str, int]:
        from egemma.engines.gemini import GeminiRequest

        self.model_calls += 1
        result = await backend.generate(
            GeminiRequest(
                model=model,
                system=job.system,
                user=_user_prompt(job.language, job.text),
                max_tokens=job.max_tokens,
                temperature=job.temperature,
                enable_safety=enable_safety,
            )
        )
        return result.text, 1

    async def _run_local(
        self, engine: Any, job: _Job, is_disconnected: Disconnected | None
    ) -> tuple[str, int]:
        runner = _LocalRunner(self, engine, job, is_disconnected)
        return await runner.run()


def _user_prompt(language: str, text: str, part: tuple[int, int] | None = None) -> str:
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


class _LocalRunner:
    """One local summary: a single call when it fits, map-reduce otherwise."""

    def __init__(
        self,
        service: SummarizeService,
        engine: Any,
        job: _Job,
        is_disconnected: Disconnected | None,
    ) -> None:
        self.service = service
        self.engine = engine
        self.job = job
        self.is_disconnected = is_disconnected
        self.family = service.settings.chat.prompt_format
        self.data_dir = service.settings.server.models_root

    async def count(self, user: str) -> int:
        turns = [Turn("system", self.job.system), Turn("user", user)]
        return await count_prompt_tokens(
            self.engine, turns, family=self.family, data_dir=self.data_dir
        )

    async def complete(self, user: str, max_tokens: int) -> str:
        turns = [Turn("system", self.job.system), Turn("user", user)]
        # The queue only checks for a departed client while waiting; map-reduce makes many calls,
        # so stop between them too rather than summarising for nobody.
        if self.is_disconnected is not None and await self.is_disconnected():
            raise UnavailableError("The client disconnected.", code="client_disconnected")
        self.service.model_calls += 1
        try:
            result = await complete_text(
                self.engine,
                turns,
                max_tokens=max_tokens,
                temperature=self.job.temperature,
                is_disconnected=self.is_disconnected,
                family=self.family,
                data_dir=self.data_dir,
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
        chunk_tokens = self.service.settings.summary.chunk_tokens
        single = _user_prompt(job.language, job.text)
        limit = n_ctx - job.max_tokens - CONTEXT_MARGIN
        if len(single) <= limit * MAX_CHARS_PER_TOKEN:
            total = await self.count(single)
            fits_chunk = chunk_tokens == 0 or total - await self.count("") <= chunk_tokens
            if total <= limit and fits_chunk:
                return await self.complete(single, job.max_tokens), 1
        return await self.map_reduce()

    async def map_reduce(self) -> tuple[str, int]:
        job = self.job
        header = await self.count(_user_prompt(job.language, "", (999, 999)))
        budget = int(self.room(header, job.max_tokens) * CHUNK_FILL)
        if self.service.settings.summary.chunk_tokens:
            budget = min(budget, self.service.settings.summary.chunk_tokens)
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
        limit = self.service.settings.summary.max_chunks
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
            user = _user_prompt(job.language, part, (i, len(parts)))
            summaries.append(await self.complete(user, part_tokens))
        return await self.reduce(summaries, reduce_room, part_tokens), len(parts)

    async def reduce(self, summaries: list[str], room: int, part_tokens: int) -> str:
        """Combine part summaries, in rounds of groups that fit, until one summary is left."""
        job = self.job
        while True:
            sizes = [self._count_raw(s) + 8 for s in summaries]
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
        return len(self.engine.tokenize(text, special=False))
