"""The embedding model under the registry, behind the unchanged ``EmbeddingEngine`` Protocol.

Its facts (name, dimension, prompts, Matryoshka sizes, cache identity) come from the exported
folder's facts file, so requests are checked, and cache hits answered, without the ONNX graph
in memory. ``hold`` is where a request waits for the weights: the embeddings service holds the
model while its texts are queued or encoded, so it is never unloaded under them, and the idle
time-to-live (``MODEL_IDLE_TTL`` or the request's ``keep_alive``) starts once the last is done.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from egemma.engines.base import EmbeddingEngine
from egemma.services.models.held import HeldModel
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


class ManagedEmbeddingEngine(HeldModel[EmbeddingEngine]):
    """An ``EmbeddingEngine`` whose ONNX session comes and goes with the registry."""

    def __init__(self, entry: ModelEntry, registry: ModelRegistry, facts: Facts, name: str) -> None:
        super().__init__(entry, registry, name)
        self.dimension = facts.dimension
        self.max_length = facts.max_seq_length
        self.identity = identity_of(facts)
        self.prompts: Mapping[str, str] = dict(facts.prompts)
        self.default_prompt_name = facts.default_prompt_name
        self.matryoshka_dims = tuple(facts.matryoshka_dims)

    def encode(self, texts: Sequence[str]) -> tuple[Any, list[int]]:
        """Blocking, from the batcher's worker thread, while a request holds the model."""
        return self.require().encode(texts)
