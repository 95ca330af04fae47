"""The embedding model under the registry, behind the unchanged ``EmbeddingEngine`` Protocol.

Its facts (name, dimension, prompts, Matryoshka sizes, cache identity) come from the exported
folder's facts file, so requests are checked, and cache hits answered, without the ONNX graph
in memory. ``hold`` is where a request waits for the weights: the embeddings service holds the
model while its texts are queued or encoded, so it is never unloaded under them, and the idle
time-to-live (``MODEL_IDLE_TTL`` or the request's ``keep_alive``) starts once the last is done.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

from egemma.engines.base import Disconnected, EmbeddingEngine
from egemma.services.models.registry import ModelEntry, ModelRegistry


class Facts(Protocol):
    """What ``engines.onnx.EmbeddingFacts`` says of an exported model (read before loading)."""

    @property
    def name(self) -> str: ...
    @property
    def dimension(self) -> int: ...
    @property
    def max_seq_length(self) -> int: ...
    @property
    def prompts(self) -> dict[str, str]: ...
    @property
    def default_prompt_name(self) -> str | None: ...
    @property
    def matryoshka_dims(self) -> tuple[int, ...]: ...
    @property
    def output(self) -> str: ...
    @property
    def source_sha256(self) -> str: ...
    @property
    def quantization(self) -> str: ...


def identity_of(facts: Facts) -> str:
    """The cache identity ``OnnxEmbeddingEngine`` gives the same folder (weights, quantization,
    output read); the e2e tests check the two agree."""
    return f"{facts.source_sha256 or facts.name}:{facts.quantization}:{facts.output}"


class ManagedEmbeddingEngine:
    """An ``EmbeddingEngine`` whose ONNX session comes and goes with the registry."""

    def __init__(self, entry: ModelEntry, registry: ModelRegistry, facts: Facts, name: str) -> None:
        self.entry = entry
        self.registry = registry
        self.name = name
        self.dimension = facts.dimension
        self.max_length = facts.max_seq_length
        self.identity = identity_of(facts)
        self.prompts: Mapping[str, str] = dict(facts.prompts)
        self.default_prompt_name = facts.default_prompt_name
        self.matryoshka_dims = tuple(facts.matryoshka_dims)

    @property
    def loaded(self) -> EmbeddingEngine | None:
        engine: EmbeddingEngine | None = self.entry.engine if self.entry.state == "loaded" else None
        return engine

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(getattr(self.loaded, "providers", ()))

    @contextlib.asynccontextmanager
    async def hold(
        self, is_disconnected: Disconnected | None = None, keep_alive: float | None = None
    ) -> AsyncIterator[None]:
        """The model loaded (first use loads it, evicting idle models if the budget requires)
        and kept so until the block ends; ``keep_alive`` applies from then."""
        await self.registry.use(self.entry, is_disconnected)
        try:
            yield
        finally:
            self.registry.release(self.entry, keep_alive)

    def encode(self, texts: Sequence[str]) -> tuple[Any, list[int]]:
        """Blocking, from the batcher's worker thread, while a request holds the model."""
        engine = self.loaded
        if engine is None:  # cannot happen while a caller holds the model
            raise RuntimeError(f"embedding model {self.name} is not loaded")
        return engine.encode(texts)

    def close(self) -> None:
        """Nothing of its own: the registry closes the loaded session."""

    def describe(self) -> dict[str, Any]:
        return self.entry.describe()
