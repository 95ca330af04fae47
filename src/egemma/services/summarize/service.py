"""Summaries: upload checks, persona prompt, cache, then Gemini or the local model.

Local content longer than the model's context is summarised map-reduce (``local.py``); the
answer says how many parts there were.

Cache: ``TwoLevelCache`` (LRU + ``diskcache`` under ``DATA_DIR/cache/summaries``), keyed by the
content hash, persona (name and rendered prompt), model identity and every generation
parameter. Only real summaries are stored: a failure raises and is never cached (the original
cached Gemini error texts as summaries).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from egemma.cache import TwoLevelCache, cache_key, shared_level
from egemma.engines.base import ChatEngine, Disconnected
from egemma.errors import InvalidRequestError, UnavailableError
from egemma.personas import PersonaRegistry, kind_for_language
from egemma.runtime import Engines
from egemma.services.models.keep_alive import parse_keep_alive
from egemma.services.models.managed import ManagedChatEngine
from egemma.services.prompting.formats import PromptFormats
from egemma.services.summarize.input import LOG_LANGUAGE, condense_log, language_for
from egemma.services.summarize.local import Job, LocalSummary, user_prompt
from egemma.services.uploads import decode_upload
from egemma.settings import Settings

if TYPE_CHECKING:  # google-genai is an extra: imported only where Gemini is used
    from egemma.engines.gemini import GeminiBackend

log = logging.getLogger(__name__)

CACHE_VERSION = 1
FALLBACK_ANSWER_SHARE = 4  # a Gemini request answered locally: max_tokens ≤ n_ctx / 4
LOCAL_DISABLED_MESSAGE = (
    "Local summarization is disabled. Please specify a Gemini model "
    "(e.g., model_name='gemini-2.5-flash')."
)


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
    keep_alive: str | None = None  # as sent; parsed by the service (400 when bad)


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


def is_gemini(model_name: str | None) -> bool:
    return bool(model_name) and str(model_name).strip().lower().startswith("gemini")


class SummarizeService:
    """Turns an upload into a summary; one per app, built in the lifespan."""

    def __init__(
        self,
        settings: Settings,
        engines: Engines,
        registry: PersonaRegistry,
        cache: TwoLevelCache,
        prompts: PromptFormats,
    ) -> None:
        self.settings = settings
        self.engines = engines
        self.registry = registry
        self.cache = cache
        self.prompts = prompts
        self.model_calls = 0
        self.max_file_size_bytes = settings.server.max_file_size_bytes

    @classmethod
    def create(
        cls, settings: Settings, engines: Engines, registry: PersonaRegistry, prompts: PromptFormats
    ) -> SummarizeService:
        cache = TwoLevelCache(
            "summaries",
            settings.server.data_dir / "cache" / "summaries",
            settings.summary.cache_max_size,
            settings.summary.disk_cache_bytes,
            shared=shared_level("summaries", settings),
        )
        return cls(settings, engines, registry, cache, prompts)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.cache.close)

    # -- the request --------------------------------------------------------------------------

    async def summarize(
        self, request: SummaryRequest, is_disconnected: Disconnected | None = None
    ) -> SummaryResult:
        server = self.settings.server
        keep_alive = parse_keep_alive(request.keep_alive)
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
        # Reading the persona file is disk work: off the event loop.
        system = await anyio.to_thread.run_sync(
            partial(
                self.registry.render,
                persona,
                kind,
                language=language,
                max_tokens=max_tokens,
                goal=request.goal,
            )
        )
        use_gemini = is_gemini(request.model_name) and not self._falls_back(request.model_name)
        if is_gemini(request.model_name) and not use_gemini:
            # Gemini's output budgets (cognition-cli asks 8192–32768) would leave a small local
            # context no room for content: keep at most a quarter of it for the answer.
            max_tokens = min(max_tokens, max(1, self._local().n_ctx // FALLBACK_ANSWER_SHARE))
        job = Job(language, text, system, max_tokens, temperature)
        if use_gemini:
            model = str(request.model_name).strip()
            backend = self._gemini()
            identity: dict[str, Any] = {"backend": "gemini", "model": model}
            extra: dict[str, Any] = {"enable_safety": request.enable_safety}
        else:
            engine = self._local()
            model = engine.name
            identity = {"backend": "llama", "model": engine.name, "path": engine.identity}
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
        if use_gemini:
            summary, chunks = await self._run_gemini(backend, model, job, request.enable_safety)
        else:
            prompter = await self.prompts.get(engine)
            local = LocalSummary(
                self.settings.summary, engine, prompter, job, is_disconnected, self._count_call
            )
            summary, chunks = await self._run_local(local, keep_alive, is_disconnected)
        if summary:
            value = {"summary": summary, "model": model, "chunks": chunks}
            await anyio.to_thread.run_sync(self.cache.set, key, value)
        return SummaryResult(language, summary, model, False, chunks)

    @staticmethod
    async def _run_local(
        local: LocalSummary, keep_alive: float | None, is_disconnected: Disconnected | None
    ) -> tuple[str, int]:
        """A registry-managed model stays loaded across every part of a map-reduce summary;
        ``keep_alive`` applies once the whole summary is done."""
        if not isinstance(local.engine, ManagedChatEngine):
            return await local.run()
        async with local.engine.hold(is_disconnected, keep_alive):
            return await local.run()

    def _count_call(self) -> None:
        self.model_calls += 1

    # -- backends -----------------------------------------------------------------------------

    def _falls_back(self, model_name: str | None) -> bool:
        """A Gemini model named on a server without ``GEMINI_API_KEY`` is answered by the local
        model when local summaries are enabled (cognition-cli always names a Gemini model)."""
        if self.engines.gemini is not None or self.settings.gemini.api_key is not None:
            return False
        if not self.settings.summary.local_enabled:
            return False
        engine = self._local()
        log.info(
            "summary asked for %s; GEMINI_API_KEY is not set, so the local model %s answers",
            str(model_name).strip(),
            engine.name,
        )
        return True

    def _gemini(self) -> GeminiBackend:
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

    def _local(self) -> ChatEngine:
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
        self, backend: GeminiBackend, model: str, job: Job, enable_safety: bool
    ) -> tuple[str, int]:
        from egemma.engines.gemini import GeminiRequest

        self.model_calls += 1
        result = await backend.generate(
            GeminiRequest(
                model=model,
                system=job.system,
                user=user_prompt(job.language, job.text),
                max_tokens=job.max_tokens,
                temperature=job.temperature,
                enable_safety=enable_safety,
            )
        )
        return result.text, 1
