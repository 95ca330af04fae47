"""Reranking by the embedding model's cosine (no cross-encoder is configured).

The query is embedded with the model's query prompt and the documents with its document
prompt (EmbeddingGemma: ``task: search result | query: `` and ``title: none | text: ``); a
model without prompts embeds both as they are. ``relevance_score`` is the cosine in [-1, 1],
not a calibrated probability as a cross-encoder's sigmoid would be: answers say
``scorer: "embedding_cosine"`` so a client can tell. Vectors go through the embeddings
service, so its cache and dynamic batching apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from egemma.engines.base import Disconnected
from egemma.errors import InvalidRequestError
from egemma.services.embeddings.service import EmbeddingService

SCORER = "embedding_cosine"


@dataclass(frozen=True)
class Ranked:
    index: int
    score: float


@dataclass(frozen=True)
class RerankOutcome:
    ranked: list[Ranked]
    tokens: int
    scorer: str = SCORER


def _prompt(service: EmbeddingService, *names: str) -> str | None:
    """The first of ``names`` the model has a prompt for (None: no prefix)."""
    return next((n for n in names if n in service.engine.prompts), None)


async def rerank_by_cosine(
    service: EmbeddingService,
    query: str,
    documents: Sequence[str],
    top_n: int | None = None,
    is_disconnected: Disconnected | None = None,
) -> RerankOutcome:
    """Documents ordered by cosine to ``query``, best first; ties keep request order."""
    if not query.strip():
        raise InvalidRequestError("query must not be empty.", param="query", code="empty_input")
    if not documents:
        raise InvalidRequestError(
            "documents must not be empty.", param="documents", code="empty_input"
        )
    service.check_cost([query, *documents])
    q = await service.embed(
        [query],
        prompt_name=_prompt(service, "Retrieval-query", "query"),
        is_disconnected=is_disconnected,
    )
    d = await service.embed(
        documents,
        prompt_name=_prompt(service, "Retrieval-document", "document"),
        is_disconnected=is_disconnected,
    )
    scores = d.vectors @ q.vectors[0]
    order = np.argsort(-scores, kind="stable")
    if top_n is not None:
        order = order[:top_n]
    ranked = [Ranked(int(i), float(scores[i])) for i in order]
    return RerankOutcome(ranked, q.total_tokens + d.total_tokens)
