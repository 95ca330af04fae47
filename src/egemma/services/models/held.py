"""A registry-managed ONNX model (the embedding model, the cross-encoder): the part both share.

The wrapper answers its facts without the session in memory; ``hold`` is where a request waits
for the weights: first use loads them (evicting idle models if the budget requires), and the
model is never unloaded while a caller holds it. The idle time-to-live (``MODEL_IDLE_TTL`` or
the request's ``keep_alive``) starts once the last holder is done.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

from egemma.engines.base import Disconnected
from egemma.services.models.registry import ModelEntry, ModelRegistry

E = TypeVar("E")


class HeldModel(Generic[E]):
    """The registry entry of one ONNX model and the engine ``E`` it holds while loaded."""

    def __init__(self, entry: ModelEntry, registry: ModelRegistry, name: str) -> None:
        self.entry = entry
        self.registry = registry
        self.name = name

    @property
    def loaded(self) -> E | None:
        engine: E | None = self.entry.engine if self.entry.state == "loaded" else None
        return engine

    def require(self) -> E:
        """The loaded engine, for a caller that holds the model."""
        engine = self.loaded
        if engine is None:  # cannot happen while a caller holds the model
            raise RuntimeError(f"{self.entry.kind} model {self.name} is not loaded")
        return engine

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(getattr(self.loaded, "providers", ()))

    @contextlib.asynccontextmanager
    async def hold(
        self, is_disconnected: Disconnected | None = None, keep_alive: float | None = None
    ) -> AsyncIterator[None]:
        """The model loaded and kept so until the block ends; ``keep_alive`` applies from then."""
        await self.registry.use(self.entry, is_disconnected)
        try:
            yield
        finally:
            self.registry.release(self.entry, keep_alive)

    def close(self) -> None:
        """Nothing of its own: the registry closes the loaded session."""

    def describe(self) -> dict[str, Any]:
        return self.entry.describe()
