"""The app's one typed state object: settings, engines, store, limits, metrics, the generations in
flight, and the services built once in the lifespan.

``create_app`` puts it on ``app.state.egemma``; routers read it through ``api/deps.py``. Every
service that holds a resource registers its ``aclose`` here when it is built, and the lifespan
runs them in reverse order at shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from egemma.cache import TwoLevelCache, shared_level
from egemma.keys import KeyRing
from egemma.lifecycle import Generations, drain, stop_now
from egemma.metrics import Metrics
from egemma.personas import PersonaRegistry
from egemma.ratelimit import RateLimiter
from egemma.runtime import Engines
from egemma.services.ast import AstService
from egemma.services.conversations import ConversationService
from egemma.services.embeddings.service import EmbeddingService
from egemma.services.generation import GenerationRunner
from egemma.services.prompting.formats import PromptFormats
from egemma.services.rerank import CrossEncoderService
from egemma.services.responses.background import BackgroundResponses
from egemma.services.responses.chat import ChatCompletionsService
from egemma.services.responses.service import ResponsesService
from egemma.services.summarize.service import SummarizeService
from egemma.settings import Settings
from egemma.store.base import Store

log = logging.getLogger(__name__)

Closer = Callable[[], Awaitable[None]]


@dataclass
class Services:
    """One instance of each feature's service for the app's lifetime."""

    responses: ResponsesService
    chat: ChatCompletionsService
    conversations: ConversationService
    personas: PersonaRegistry
    summarize: SummarizeService
    ast: AstService
    embeddings: EmbeddingService | None  # None when the embedding model is not loaded
    background: BackgroundResponses | None = None  # background: true responses (issue 13)
    reranker: CrossEncoderService | None = None  # RERANK_MODEL_PATH's cross-encoder (issue 14)

    def caches(self) -> list[TwoLevelCache]:
        found = [self.summarize.cache]
        if self.embeddings is not None and self.embeddings.cache is not None:
            found.append(self.embeddings.cache)
        return found


@dataclass
class AppState:
    settings: Settings
    engines: Engines
    store: Store
    rate_limiter: RateLimiter
    prompts: PromptFormats
    keys: KeyRing
    started_at: int
    generations: Generations = field(default_factory=Generations)
    metrics: Metrics = field(init=False)
    public_paths: frozenset[str] = frozenset()
    started: bool = False
    services: Services | None = None
    closers: list[Closer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self)

    @property
    def draining(self) -> bool:
        return self.generations.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.generations.draining = value

    def build_services(self) -> Services:
        """Every service, once, after the engines are loaded; their closers registered."""
        settings, engines = self.settings, self.engines
        runner = GenerationRunner(self.generations, self.metrics)
        if engines.registry is not None:
            engines.registry.start()  # idle unload (MODEL_IDLE_TTL)
            self.closers.append(engines.registry.aclose)
        responses = ResponsesService(engines, settings, self.store, self.prompts, runner)
        personas = PersonaRegistry.from_directory(settings.summary.personas_dir)
        summarize = SummarizeService.create(settings, engines, personas, self.prompts)
        self.closers.append(summarize.aclose)
        if engines.gemini is not None:
            self.closers.append(engines.gemini.aclose)
        ast = AstService.from_settings(settings.ast)
        self.closers.append(ast.aclose)
        embeddings = None
        if engines.embedding is not None:
            embeddings = EmbeddingService.create(
                engines.embedding,
                settings.embedding,
                settings.server.data_dir,
                shared_level("embeddings", settings),
            )
            self.closers.append(embeddings.aclose)
        reranker = None
        if engines.reranker is not None:
            reranker = CrossEncoderService(engines.reranker, settings.rerank)
        background = BackgroundResponses(responses, self.store)
        self.closers.append(background.close)
        self.services = Services(
            background=background,
            responses=responses,
            chat=ChatCompletionsService(responses),
            conversations=ConversationService(self.store),
            personas=personas,
            summarize=summarize,
            ast=ast,
            embeddings=embeddings,
            reranker=reranker,
        )
        return self.services

    async def close_services(self) -> None:
        while self.closers:
            closer = self.closers.pop()
            try:
                await closer()
            except Exception:  # one failing close must not keep the others open
                log.exception("closing a service failed")

    async def drain(self, grace: float) -> None:
        await drain(self.generations, self.engines.chat_engines(), grace)

    def stop_now(self) -> None:
        stop_now(self.generations)
