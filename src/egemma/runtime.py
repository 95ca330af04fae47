"""What the app holds at run time: engines per capability and their health.

``create_app(settings, engines=None)`` builds ``Engines`` from settings in the lifespan
(``loaders.py``); tests pass their own, typically fakes from ``tests/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from egemma.engines.base import CapabilityStatus

# Health keys kept from the original /health so existing readers carry on.
CAPABILITIES = {
    "chat": "chat_model",
    "local_summarization": "local_summarization_model",
    "gemini": "gemini_api",
    "embeddings": "embedding_model",
}


@dataclass
class Engines:
    """Loaded engines. ``chat`` maps served model name → engine (one context each)."""

    chat: dict[str, Any] = field(default_factory=dict)
    chat_default: str | None = None
    summary: Any = None  # a chat engine used for local summaries (may be one of ``chat``)
    gemini: Any = None
    embedding: Any = None
    status: dict[str, CapabilityStatus] = field(default_factory=dict)

    def capability(self, key: str) -> CapabilityStatus:
        if key not in self.status:
            self.status[key] = CapabilityStatus(name=key)
        return self.status[key]

    def close(self) -> None:
        seen: set[int] = set()
        for engine in [*self.chat.values(), self.summary, self.gemini, self.embedding]:
            if engine is None or id(engine) in seen:
                continue
            seen.add(id(engine))
            close = getattr(engine, "close", None)
            if callable(close):
                close()
