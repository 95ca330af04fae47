"""``POST /v1/rerank`` and ``POST /rerank``: order documents by relevance to a query.

Thin: check the request, hand it to ``services.rerank`` (the cross-encoder when one is
configured, else the embedding model's cosine), shape the Jina/Cohere/vLLM answer.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from egemma.api.deps import RerankScorerDep
from egemma.errors import InvalidRequestError
from egemma.ids import new_id
from egemma.protocol.rerank import (
    MAX_DOCUMENTS,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankResultDocument,
    RerankUsage,
)
from egemma.ratelimit import rate_limit
from egemma.services.models.keep_alive import parse_keep_alive
from egemma.services.rerank import CrossEncoderService, rerank_by_cosine

router = APIRouter(tags=["embeddings"])


def _texts(body: RerankRequest) -> list[str]:
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    if len(texts) > MAX_DOCUMENTS:
        raise InvalidRequestError(
            f"documents holds {len(texts)} items; at most {MAX_DOCUMENTS} are accepted.",
            param="documents",
            code="too_many_inputs",
        )
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidRequestError(
                f"documents[{i}] is empty.", param=f"documents[{i}]", code="empty_input"
            )
    return texts


@router.post(
    "/v1/rerank",
    summary="Rerank documents by relevance to a query (Jina/Cohere/vLLM shape)",
    dependencies=[Depends(rate_limit("embed"))],
)
@router.post("/rerank", include_in_schema=False, dependencies=[Depends(rate_limit("embed"))])
async def rerank(body: RerankRequest, service: RerankScorerDep, request: Request) -> RerankResponse:
    texts = _texts(body)
    keep_alive = parse_keep_alive(body.keep_alive)
    if isinstance(service, CrossEncoderService):
        outcome = await service.rerank(
            body.query, texts, body.top_n, request.is_disconnected, keep_alive
        )
    else:
        outcome = await rerank_by_cosine(
            service,
            body.query,
            texts,
            body.top_n,
            is_disconnected=request.is_disconnected,
            keep_alive=keep_alive,
        )
    results = [
        RerankResult(
            index=r.index,
            relevance_score=r.score,
            document=RerankResultDocument(text=texts[r.index]) if body.return_documents else None,
        )
        for r in outcome.ranked
    ]
    return RerankResponse(
        id=new_id("rerank"),
        model=service.engine.name,
        scorer=outcome.scorer,
        results=results,
        usage=RerankUsage(prompt_tokens=outcome.tokens, total_tokens=outcome.tokens),
    )
