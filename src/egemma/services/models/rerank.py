"""The cross-encoder under the registry, behind the unchanged ``RerankEngine`` Protocol.

Its facts (name, longest pair, identity) come from ``egemma-reranker.json``, so requests are
checked without the ONNX graph in memory; the rerank service holds the model while a request's
pairs wait for the CPU and are scored, so it is never unloaded (idle TTL, eviction) under them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from egemma.engines.base import RerankEngine
from egemma.services.models.held import HeldModel
from egemma.services.models.registry import ModelEntry, ModelRegistry


class RerankFacts(Protocol):
    """What ``engines.onnx_rerank.RerankFacts`` says of an exported cross-encoder."""

    @property
    def name(self) -> str: ...
    @property
    def max_seq_length(self) -> int: ...
    @property
    def source_sha256(self) -> str: ...


def rerank_identity(facts: RerankFacts) -> str:
    """The identity ``OnnxRerankEngine`` gives the same folder."""
    return f"{facts.source_sha256 or facts.name}:rerank"


class ManagedRerankEngine(HeldModel[RerankEngine]):
    """A ``RerankEngine`` whose ONNX session comes and goes with the registry."""

    def __init__(
        self, entry: ModelEntry, registry: ModelRegistry, facts: RerankFacts, name: str
    ) -> None:
        super().__init__(entry, registry, name)
        self.max_length = facts.max_seq_length
        self.identity = rerank_identity(facts)

    def score(self, query: str, documents: Sequence[str]) -> tuple[Any, list[int]]:
        """Blocking, from a worker thread, while the request holds the model."""
        return self.require().score(query, documents)
