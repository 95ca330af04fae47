"""Embeddings: task prompts, the two-level cache, dynamic batching and Matryoshka truncation.

Requests hand in texts; each text gets its task prompt, is looked up in the cache (full vectors,
keyed by model identity and prompted text) and the misses go through one ``DynamicBatcher``,
which gathers concurrent requests into engine batches. Vectors leave as full-dimension unit
vectors; ``truncate`` cuts them to a requested size and re-normalises (Matryoshka).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from egemma.cache import TwoLevelCache, cache_key
from egemma.engines.base import Disconnected, EmbeddingEngine
from egemma.errors import InvalidRequestError
from egemma.protocol.embeddings import MAX_INPUTS
from egemma.services.departures import unless_gone
from egemma.services.embeddings.batcher import DynamicBatcher
from egemma.services.embeddings.openai_tokens import OpenAITokenDecoder
from egemma.services.models.embedding import ManagedEmbeddingEngine
from egemma.settings import EmbeddingSettings
from egemma.shared_cache import RedisLevel

log = logging.getLogger(__name__)

# EmbeddingGemma's prompt names (model card), the ones the original /embed accepted. A model
# without a prompt map (all-MiniLM-L6-v2) accepts them as no-ops so existing clients keep working.
EMBEDDINGGEMMA_PROMPT_NAMES = (
    "query",
    "document",
    "BitextMining",
    "Clustering",
    "Classification",
    "InstructionRetrieval",
    "MultilabelClassification",
    "PairClassification",
    "Reranking",
    "Retrieval",
    "Retrieval-query",
    "Retrieval-document",
    "STS",
    "Summarization",
)
DOCUMENT_TITLE_SLOT = "title: none"
ORIGINAL_MAX_DIMENSIONS = 768  # the original /embed's largest size (EmbeddingGemma's)
INLINE_CACHE_LOOKUPS = 16  # more lookups than this go to a worker thread (disk reads block)
MAX_PENDING_WRITES = 256  # unwritten vectors before a caller waits for the disk
WRITE_BEHIND = 0.25  # seconds between disk writes of new vectors


@dataclass
class EmbedResult:
    vectors: np.ndarray  # (n, dimension) float32, unit length
    tokens: list[int] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)


def truncate(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Matryoshka: keep the first ``dimensions`` components, then L2-normalise again."""
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    out: np.ndarray = cut / norms
    return out


def pad(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Zero-pad to ``dimensions``: unit length, dot products and distances all unchanged."""
    out = np.zeros((vectors.shape[0], dimensions), dtype=np.float32)
    out[:, : vectors.shape[1]] = vectors
    return out


def resize(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Truncate (Matryoshka) or pad full-dimension vectors to ``dimensions``."""
    if dimensions == vectors.shape[1]:
        return vectors
    return (
        pad(vectors, dimensions) if dimensions > vectors.shape[1] else truncate(vectors, dimensions)
    )


class EmbeddingService:
    """Embeds texts for both endpoints: prompts → cache → batcher → cache."""

    def __init__(
        self, engine: EmbeddingEngine, settings: EmbeddingSettings, cache: TwoLevelCache | None
    ) -> None:
        self.engine = engine
        self.cache = cache
        # One request may not hold more texts than may wait, nor more characters than the cap.
        self.max_inputs = min(MAX_INPUTS, settings.queue_size)
        self.max_chars = settings.max_request_chars
        self.openai_tokens = OpenAITokenDecoder()  # token-id input: loaded on first use
        self.pad_dimensions = settings.pad_dimensions
        self._unwritten: list[tuple[str, tuple[int, bytes]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batcher = DynamicBatcher(
            engine.encode,
            max_batch=settings.max_batch_size,
            max_wait=settings.max_wait_ms / 1000.0,
            queue_size=settings.queue_size,
        )

    @classmethod
    def create(
        cls,
        engine: EmbeddingEngine,
        settings: EmbeddingSettings,
        data_dir: Path,
        shared: RedisLevel | None = None,
    ) -> EmbeddingService:
        cache = None
        if settings.cache_max_size > 0 or settings.disk_cache_bytes > 0 or shared is not None:
            cache = TwoLevelCache(
                "embeddings",
                data_dir / "cache" / "embeddings",
                settings.cache_max_size,
                settings.disk_cache_bytes,
                shared=shared,
            )
        return cls(engine, settings, cache)

    # -- request checks ------------------------------------------------------------------------

    @property
    def prompt_names(self) -> list[str]:
        return list(self.engine.prompts) or list(EMBEDDINGGEMMA_PROMPT_NAMES)

    @property
    def default_dimensions(self) -> int:
        """``/embed``'s default: the smallest trained Matryoshka size, else the full size."""
        dims = self.engine.matryoshka_dims
        return min(dims) if dims else self.engine.dimension

    def prefix(self, prompt_name: str | None, title: str | None = None) -> str:
        """The text put before each input for ``prompt_name`` (400 when unknown).

        ``title`` fills EmbeddingGemma's document slot (``title: none | text: ``); prompts
        without that slot, and models without prompts, ignore it.
        """
        prompts = self.engine.prompts
        if prompt_name is None:
            prompt_name = self.engine.default_prompt_name
            if prompt_name is None:
                return ""
        if prompt_name in prompts:
            text = prompts[prompt_name]
        elif not prompts and prompt_name in EMBEDDINGGEMMA_PROMPT_NAMES:
            return ""  # a model trained without prompts: accepted, no prefix
        else:
            raise InvalidRequestError(
                f"Unknown prompt_name {prompt_name!r} for {self.engine.name}; available: "
                + ", ".join(self.prompt_names),
                param="prompt_name",
                code="unknown_prompt_name",
            )
        if title and DOCUMENT_TITLE_SLOT in text:
            text = text.replace(DOCUMENT_TITLE_SLOT, f"title: {title}", 1)
        return text

    def check_embed_dimensions(self, dimensions: int) -> int:
        """``/embed``'s sizes: the original eGemma's (up to 768) are answered by any model,
        padded with zeros above the model's own size (cognition-cli asks 768 only)."""
        if self.pad_dimensions and self.engine.dimension < dimensions <= ORIGINAL_MAX_DIMENSIONS:
            return dimensions
        return self.check_dimensions(dimensions)

    def check_dimensions(self, dimensions: int) -> int:
        if not 1 <= dimensions <= self.engine.dimension:
            raise InvalidRequestError(
                f"dimensions must be between 1 and {self.engine.dimension} for "
                f"{self.engine.name}, got {dimensions}",
                param="dimensions",
                code="invalid_dimensions",
            )
        return dimensions

    # -- embedding -----------------------------------------------------------------------------

    def _key(self, text: str) -> str:
        return cache_key(model=self.engine.identity, text=text)

    def _lookup(self, keys: Sequence[str]) -> list[tuple[np.ndarray, int] | None]:
        out: list[tuple[np.ndarray, int] | None] = []
        for key in keys:
            value: Any = self.cache.get(key) if self.cache is not None else None
            out.append(self._decode_entry(value))
        return out

    def _decode_entry(self, value: Any) -> tuple[np.ndarray, int] | None:
        if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], bytes)):
            return None
        vector = np.frombuffer(value[1], dtype=np.float32)
        return (vector, int(value[0])) if vector.shape[0] == self.engine.dimension else None

    def _store(self, items: Sequence[tuple[str, tuple[int, bytes]]]) -> None:
        if self.cache is None:
            return
        for key, value in items:
            self.cache.set(key, value)

    @staticmethod
    def _entry(vector: np.ndarray, tokens: int) -> tuple[int, bytes]:
        return (tokens, np.asarray(vector, dtype=np.float32).tobytes())

    def check_cost(self, texts: Sequence[str]) -> None:
        """The bound on one request's work, decided before anything is queued."""
        if len(texts) > self.max_inputs:
            raise InvalidRequestError(
                f"input holds {len(texts)} items; at most {self.max_inputs} are accepted "
                "(EMBEDDING_QUEUE_SIZE).",
                param="input",
                code="too_many_inputs",
            )
        chars = sum(len(t) for t in texts)
        if chars > self.max_chars:
            raise InvalidRequestError(
                f"input holds {chars} characters; at most {self.max_chars} are accepted in one "
                "request (EMBEDDING_MAX_REQUEST_CHARS).",
                param="input",
                code="input_too_large",
            )

    async def embed(
        self,
        texts: Sequence[str],
        prompt_name: str | None = None,
        title: str | None = None,
        is_disconnected: Disconnected | None = None,
        keep_alive: float | None = None,
    ) -> EmbedResult:
        """Full-dimension unit vectors for ``texts`` (prompt applied), in order. Texts still
        queued are dropped when the client leaves (``ClientLeftError``). A registry-managed
        model is loaded for the misses only (cache hits need no model) and stays loaded
        ``keep_alive`` seconds after (None: ``MODEL_IDLE_TTL``)."""
        self.check_cost(texts)
        prefix = self.prefix(prompt_name, title)
        prompted = [prefix + t for t in texts]
        keys = [self._key(t) for t in prompted]
        if len(keys) > INLINE_CACHE_LOOKUPS or (self.cache is not None and self.cache.remote):
            found = await anyio.to_thread.run_sync(self._lookup, keys)
        else:
            found = self._lookup(keys)
        missing = [i for i, hit in enumerate(found) if hit is None]
        if missing:
            todo = [prompted[i] for i in missing]
            async with self._held(is_disconnected, keep_alive):
                computed = await unless_gone(is_disconnected, partial(self.batcher.submit, todo))
            for i, value in zip(missing, computed, strict=True):
                found[i] = value
            fresh = [(keys[i], v, n) for i, (v, n) in zip(missing, computed, strict=True)]
            await self._store_later(fresh)
        hits = [f for f in found if f is not None]
        vectors = np.stack([v for v, _ in hits]) if hits else np.empty((0, self.engine.dimension))
        return EmbedResult(
            vectors=vectors.astype(np.float32, copy=False), tokens=[n for _, n in hits]
        )

    def _held(
        self, is_disconnected: Disconnected | None, keep_alive: float | None
    ) -> contextlib.AbstractAsyncContextManager[None]:
        if isinstance(self.engine, ManagedEmbeddingEngine):
            return self.engine.hold(is_disconnected, keep_alive)
        return contextlib.nullcontext()

    async def _store_later(self, entries: list[tuple[str, np.ndarray, int]]) -> None:
        """Write-behind: new vectors go to the memory level at once and to disk in one thread
        hop per ``WRITE_BEHIND`` seconds, off the response path (a write competing with the
        next request cost milliseconds on 2 cores). ``aclose`` flushes what is left."""
        if self.cache is None:
            return
        items = [(key, self._entry(vector, tokens)) for key, vector, tokens in entries]
        for key, value in items:  # visible to the next request at once
            self.cache.remember(key, value)
        self._unwritten.extend(items)
        if len(self._unwritten) >= MAX_PENDING_WRITES:
            await self._flush()
        elif self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(WRITE_BEHIND)
        self._flusher = None
        await self._flush()

    async def _flush(self) -> None:
        items, self._unwritten = self._unwritten, []
        if items:
            await anyio.to_thread.run_sync(self._store, items)

    async def aclose(self) -> None:
        await self.batcher.aclose()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self._flush()
        if self.cache is not None:
            await anyio.to_thread.run_sync(self.cache.close)
