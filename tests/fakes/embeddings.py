"""``FakeEmbeddingEngine``: deterministic hash → unit vector, with call counting.

Same contract as ``egemma.engines.base.EmbeddingEngine``; injected via ``create_app(...,
engines=...)``, never selectable from settings.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np


class FakeEmbeddingEngine:
    def __init__(
        self,
        dimension: int = 32,
        *,
        prompts: Mapping[str, str] | None = None,
        matryoshka_dims: tuple[int, ...] = (),
        delay: float = 0.0,
        name: str = "fake-embedder",
    ) -> None:
        self.name = name
        self.dimension = dimension
        self.max_length = 128
        self.identity = f"fake:{name}:{dimension}"
        self.prompts: Mapping[str, str] = dict(prompts or {})
        self.default_prompt_name: str | None = None
        self.matryoshka_dims = matryoshka_dims
        self.delay = delay
        self.calls: list[list[str]] = []
        self.closed = False
        self._lock = threading.Lock()

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
        out: np.ndarray = v / np.linalg.norm(v)
        return out

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        with self._lock:
            self.calls.append(list(texts))
        if self.delay:
            time.sleep(self.delay)
        vectors = np.stack([self.vector(t) for t in texts])
        return vectors, [len(t.split()) + 2 for t in texts]

    @property
    def texts_encoded(self) -> int:
        return sum(len(c) for c in self.calls)

    def close(self) -> None:
        self.closed = True
