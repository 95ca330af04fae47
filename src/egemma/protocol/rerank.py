"""Wire models for ``POST /v1/rerank`` (and ``/rerank``): the Jina/Cohere shape that vLLM and
llama-server serve. Request: ``query``, ``documents`` (strings or ``{"text": ...}``), ``top_n``,
``return_documents``. Answer: ``results`` sorted by ``relevance_score``, each with the
``index`` of its document in the request and, when asked, ``document: {"text"}``.

eGemma adds ``scorer`` to the answer: ``"cross_encoder"`` when the configured cross-encoder
(``RERANK_MODEL_PATH``) scored each pair (its raw logit, or its sigmoid with
``RERANK_SCORE=sigmoid``), ``"embedding_cosine"`` when the scores are the embedding model's
cosine between query and document (no cross-encoder is configured).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

MAX_DOCUMENTS = 1000  # Cohere's documented limit per request


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: StrictStr = Field(description="The document's text.")


class RerankRequest(BaseModel):
    """Jina/Cohere/vLLM ``rerank`` body; unknown fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="Accepted; the server's model answers.")
    query: StrictStr = Field(description="The search query.")
    documents: list[StrictStr | RerankDocument] = Field(
        description="Texts to order by relevance to the query (strings or {text})."
    )
    top_n: StrictInt | None = Field(
        None, ge=1, description="Return only the best N results (default: all)."
    )
    return_documents: StrictBool = Field(
        True, description="Include each document's text in its result (as Jina and vLLM do)."
    )
    keep_alive: Any = Field(
        default=None,
        description="eGemma extension (Ollama's): how long the model stays loaded after this "
        "request: seconds, a duration such as '5m', 0 to unload at once, -1 to keep it loaded.",
    )


class RerankResultDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankResultDocument | None = None


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    model: str
    scorer: Literal["embedding_cosine", "cross_encoder"] = Field(
        description="eGemma: how relevance_score was computed."
    )
    results: list[RerankResult]
    usage: RerankUsage
