"""What the app holds at run time: engines per capability and their health.

``create_app(settings, engines=None)`` builds ``Engines`` from settings in the lifespan
(``loaders.py``); tests pass their own, typically fakes from ``tests/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from egemma.engines.base import CapabilityStatus, ChatEngine, EmbeddingEngine, RerankEngine

if TYPE_CHECKING:
    from egemma.engines.gemini import GeminiBackend
    from egemma.services.models.registry import ModelRegistry

# Health keys kept from the original /health so existing readers carry on.
CAPABILITIES = {
    "chat": "chat_model",
    "local_summarization": "local_summarization_model",
    "gemini": "gemini_api",
    "embeddings": "embedding_model",
}
# Shown (and awaited by /ready) only once a loader records them: the cross-encoder exists only
# when RERANK_MODEL_PATH is set, and tests that pass their own engines never see it.
OPTIONAL_CAPABILITIES = {"rerank": "rerank_model"}


@dataclass
class Engines:
    """Loaded engines. ``chat`` maps served model name → engine (one context each)."""

    chat: dict[str, ChatEngine] = field(default_factory=dict)
    chat_default: str | None = None
    summary: ChatEngine | None = None  # local summaries (may be one of ``chat``)
    gemini: GeminiBackend | None = None
    embedding: EmbeddingEngine | None = None
    reranker: RerankEngine | None = None  # the cross-encoder (RERANK_MODEL_PATH)
    status: dict[str, CapabilityStatus] = field(default_factory=dict)
    # Loads, evicts and unloads the chat, summary, embedding and rerank models on demand
    # (services/models); None when the engines were passed in (tests with fakes).
    registry: ModelRegistry | None = None

    def capability(self, key: str) -> CapabilityStatus:
        if key not in self.status:
            self.status[key] = CapabilityStatus(name=key)
        return self.status[key]

    def capability_keys(self) -> dict[str, str]:
        """Every capability key and its /health name: the fixed ones and the recorded optional."""
        found = {k: v for k, v in OPTIONAL_CAPABILITIES.items() if k in self.status}
        return {**CAPABILITIES, **found}

    def chat_engines(self) -> list[ChatEngine]:
        """Every distinct chat engine: the served models and the summary model."""
        seen: dict[int, ChatEngine] = {}
        for engine in [*self.chat.values(), self.summary]:
            if engine is not None:
                seen.setdefault(id(engine), engine)
        return list(seen.values())

    def close(self) -> None:
        if self.registry is not None:
            self.registry.close_all()
        for engine in self.chat_engines():
            engine.close()
        if self.gemini is not None:
            self.gemini.close()
        if self.embedding is not None:
            self.embedding.close()
        if self.reranker is not None:
            self.reranker.close()
