"""A deterministic cross-encoder for tests: a pair's score is read from a table, or derived
from a hash of the pair (never selectable from settings)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np


class FakeRerankEngine:
    name = "fake-cross-encoder"
    max_length = 512
    identity = "fake-cross-encoder:rerank"

    def __init__(self, table: Mapping[str, float] | None = None) -> None:
        self.table = dict(table or {})
        self.calls: list[tuple[str, list[str]]] = []
        self.closed = False

    def logit(self, query: str, document: str) -> float:
        if document in self.table:
            return self.table[document]
        digest = hashlib.sha256(f"{query}\0{document}".encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32 * 8.0 - 4.0

    def score(self, query: str, documents: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        self.calls.append((query, list(documents)))
        scores = np.array([self.logit(query, d) for d in documents], dtype=np.float32)
        return scores, [len(query.split()) + len(d.split()) + 3 for d in documents]

    def close(self) -> None:
        self.closed = True
