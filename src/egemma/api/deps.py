"""Dependencies that hand routers the app's typed state and its services (built once in the
lifespan: ``state.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from egemma.errors import AuthenticationError, DrainingError, UnavailableError
from egemma.keys import Principal
from egemma.personas import PersonaRegistry
from egemma.services.ast import AstService
from egemma.services.conversations import ConversationService
from egemma.services.embeddings.service import EmbeddingService
from egemma.services.rerank import CrossEncoderService
from egemma.services.responses.chat import ChatCompletionsService
from egemma.services.responses.service import ResponsesService
from egemma.services.summarize.service import SummarizeService
from egemma.state import AppState, Services
from egemma.store.base import Owner, Store

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
T = TypeVar("T")


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.egemma
    return state


def services(request: Request) -> Services:
    built = app_state(request).services
    if built is None:
        raise UnavailableError("The server is starting.", retry_after=2, code="starting")
    return built


async def refuse_when_draining(request: Request) -> None:
    """On every protected route: while draining, new work (any write) gets 503."""
    if app_state(request).draining and request.method not in SAFE_METHODS:
        raise DrainingError()


async def require_store(request: Request) -> None:
    """On routes whose work needs the store: probe it first, so a broken or too-new database is
    a 503 naming the store before anything runs (issue 18, item 12)."""
    await app_state(request).store.check()


def _responses(request: Request) -> ResponsesService:
    return services(request).responses


def _chat(request: Request) -> ChatCompletionsService:
    return services(request).chat


def principal(request: Request) -> Principal:
    """The authenticated caller (set by ``security.require_api_key``); deny by default."""
    found: Principal | None = getattr(request.state, "principal", None)
    if found is None:
        raise AuthenticationError()
    return found


def _owner(request: Request) -> Owner:
    return principal(request).owner


def _conversations(request: Request) -> ConversationService:
    services(request)  # 503 while starting, like every service
    return ConversationService(app_state(request).store.scoped(_owner(request)))


def _summarize(request: Request) -> SummarizeService:
    return services(request).summarize


def _ast(request: Request) -> AstService:
    return services(request).ast


def _personas(request: Request) -> PersonaRegistry:
    return services(request).personas


def _store(request: Request) -> Store:
    """The store as the caller sees it: their own rows (every row for an admin key)."""
    return app_state(request).store.scoped(_owner(request))


def _embeddings(request: Request) -> EmbeddingService:
    service = services(request).embeddings
    if service is None:
        status = app_state(request).engines.capability("embeddings")
        reason = status.reason or status.status.replace("_", " ")
        raise UnavailableError(
            f"The embedding model is not available ({reason}).", code="model_not_loaded"
        )
    return service


def _rerank_scorer(request: Request) -> CrossEncoderService | EmbeddingService:
    """The cross-encoder when RERANK_MODEL_PATH is set (503 while it is not loaded: never a
    silent switch to another scorer), else the embedding model's cosine."""
    built = services(request)
    if built.reranker is not None:
        return built.reranker
    engines = app_state(request).engines
    if "rerank" in engines.status:
        status = engines.capability("rerank")
        reason = status.reason or status.status.replace("_", " ")
        raise UnavailableError(
            f"The rerank model is not available ({reason}).", code="model_not_loaded"
        )
    return _embeddings(request)


def _on_loop(lookup: Callable[[Request], T]) -> Callable[[Request], Awaitable[T]]:
    """``lookup`` as an async dependency: FastAPI runs a plain ``def`` dependency in its worker
    threads, a round trip between threads per dependency and request for what is an attribute
    lookup (two thread wake-ups each, which a streamed request paid three times)."""

    async def dependency(request: Request) -> T:
        return lookup(request)

    return dependency


StateDep = Annotated[AppState, Depends(_on_loop(app_state))]
ResponsesDep = Annotated[ResponsesService, Depends(_on_loop(_responses))]
ChatDep = Annotated[ChatCompletionsService, Depends(_on_loop(_chat))]
ConversationsDep = Annotated[ConversationService, Depends(_on_loop(_conversations))]
SummarizeDep = Annotated[SummarizeService, Depends(_on_loop(_summarize))]
AstDep = Annotated[AstService, Depends(_on_loop(_ast))]
PersonasDep = Annotated[PersonaRegistry, Depends(_on_loop(_personas))]
StoreDep = Annotated[Store, Depends(_on_loop(_store))]
OwnerDep = Annotated[Owner, Depends(_on_loop(_owner))]
EmbeddingsDep = Annotated[EmbeddingService, Depends(_on_loop(_embeddings))]
RerankScorerDep = Annotated[
    CrossEncoderService | EmbeddingService, Depends(_on_loop(_rerank_scorer))
]
