"""Reranking: by a cross-encoder when ``RERANK_MODEL_PATH`` names one (``CrossEncoderService``),
else by the embedding model's cosine (``rerank_by_cosine``).

A cross-encoder reads query and document together and answers the model's raw logit (or its
sigmoid, ``RERANK_SCORE``): answers say ``scorer: "cross_encoder"``.

Without one, the query is embedded with the model's query prompt and the documents with its document
prompt (EmbeddingGemma: ``task: search result | query: `` and ``title: none | text: ``); a
model without prompts embeds both as they are. ``relevance_score`` is the cosine in [-1, 1],
not a calibrated probability as a cross-encoder's sigmoid would be: answers say
``scorer: "embedding_cosine"`` so a client can tell. Vectors go through the embeddings
service, so its cache and dynamic batching apply.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import anyio
import numpy as np

from egemma.engines.base import Disconnected, RerankEngine
from egemma.errors import InvalidRequestError
from egemma.services.embeddings.service import EmbeddingService
from egemma.services.models.rerank import ManagedRerankEngine
from egemma.settings import RerankSettings

Scorer = Literal["embedding_cosine", "cross_encoder"]
SCORER: Scorer = "embedding_cosine"
CROSS_ENCODER: Scorer = "cross_encoder"


@dataclass(frozen=True)
class Ranked:
    index: int
    score: float


@dataclass(frozen=True)
class RerankOutcome:
    ranked: list[Ranked]
    tokens: int
    scorer: Scorer = SCORER


def _check(query: str, documents: Sequence[str]) -> None:
    if not query.strip():
        raise InvalidRequestError("query must not be empty.", param="query", code="empty_input")
    if not documents:
        raise InvalidRequestError(
            "documents must not be empty.", param="documents", code="empty_input"
        )


def _ranked(scores: np.ndarray, top_n: int | None) -> list[Ranked]:
    """Best first; ties keep request order."""
    order = np.argsort(-scores, kind="stable")
    if top_n is not None:
        order = order[:top_n]
    return [Ranked(int(i), float(scores[i])) for i in order]


class CrossEncoderService:
    """Scores (query, document) pairs with the configured cross-encoder, off the event loop.

    One request's pairs go to the engine in one call (it sorts them by length into runs); a
    limiter keeps at most ``CONCURRENCY`` requests on the CPU at once so the worker threads do
    not oversubscribe the cores ONNX Runtime already uses."""

    CONCURRENCY = 2

    def __init__(self, engine: RerankEngine, settings: RerankSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._limiter = anyio.CapacityLimiter(self.CONCURRENCY)

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        top_n: int | None = None,
        is_disconnected: Disconnected | None = None,
        keep_alive: float | None = None,
    ) -> RerankOutcome:
        """A registry-managed model is loaded (first use) and held while the pairs wait for
        the CPU and are scored; it stays loaded ``keep_alive`` seconds after (None:
        ``MODEL_IDLE_TTL``). Bad input is refused before anything loads."""
        _check(query, documents)
        chars = len(query) * len(documents) + sum(len(d) for d in documents)
        if chars > self.settings.max_request_chars:
            raise InvalidRequestError(
                f"The request holds {chars} characters of query and documents; at most "
                f"{self.settings.max_request_chars} are accepted (RERANK_MAX_REQUEST_CHARS).",
                param="documents",
                code="too_many_inputs",
            )
        async with self._held(is_disconnected, keep_alive):
            logits, counts = await anyio.to_thread.run_sync(
                self.engine.score, query, list(documents), limiter=self._limiter
            )
        scores = np.asarray(logits, dtype=np.float64)
        if self.settings.score == "sigmoid":
            scores = 1.0 / (1.0 + np.exp(-scores))
        return RerankOutcome(_ranked(scores, top_n), sum(counts), CROSS_ENCODER)

    def _held(
        self, is_disconnected: Disconnected | None, keep_alive: float | None
    ) -> contextlib.AbstractAsyncContextManager[None]:
        if isinstance(self.engine, ManagedRerankEngine):
            return self.engine.hold(is_disconnected, keep_alive)
        return contextlib.nullcontext()


def _prompt(service: EmbeddingService, *names: str) -> str | None:
    """The first of ``names`` the model has a prompt for (None: no prefix)."""
    return next((n for n in names if n in service.engine.prompts), None)


async def rerank_by_cosine(
    service: EmbeddingService,
    query: str,
    documents: Sequence[str],
    top_n: int | None = None,
    is_disconnected: Disconnected | None = None,
    keep_alive: float | None = None,
) -> RerankOutcome:
    """Documents ordered by cosine to ``query``, best first; ties keep request order."""
    _check(query, documents)
    service.check_cost([query, *documents])
    q = await service.embed(
        [query],
        prompt_name=_prompt(service, "Retrieval-query", "query"),
        is_disconnected=is_disconnected,
        keep_alive=keep_alive,
    )
    d = await service.embed(
        documents,
        prompt_name=_prompt(service, "Retrieval-document", "document"),
        is_disconnected=is_disconnected,
        keep_alive=keep_alive,
    )
    scores = d.vectors @ q.vectors[0]
    return RerankOutcome(_ranked(scores, top_n), q.total_tokens + d.total_tokens)
