"""A chat model the registry loads on first use, behind the unchanged ``ChatEngine`` Protocol.

Facts, tokenizing and grammar checks come from the GGUF's vocabulary (``VocabModel``), so a
request is prepared and validated before its weights are loaded; ``admit`` is where it waits:
first for the registry to load the model (evicting idle ones if the budget requires), then in
the model's own FIFO. From ``admit`` until its slot is released the request counts as a user, so
the model cannot be unloaded under a running or queued generation.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from egemma.engines.base import (
    AdmissionClosedError,
    AdmissionStats,
    ChatEngine,
    Disconnected,
    GenerationRequest,
    Slot,
    SpecialTokens,
    TokenStream,
)
from egemma.engines.llamacpp_vocab import VocabModel
from egemma.services.models.registry import ModelEntry, ModelRegistry

IDLE = AdmissionStats(depth=0, busy=False, admitted=0, rejected=0, abandoned=0)


class ManagedSlot:
    """The model's own slot and the registry use, released together (idempotent)."""

    def __init__(
        self,
        slot: Slot,
        registry: ModelRegistry,
        entry: ModelEntry,
        keep_alive: float | None = None,
    ) -> None:
        self._slot: Slot | None = slot
        self._registry = registry
        self._entry = entry
        self._keep_alive = keep_alive

    def release(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()
            self._registry.release(self._entry, self._keep_alive)


class ManagedChatEngine:
    """A ``ChatEngine`` whose weights come and go with the registry."""

    def __init__(
        self, entry: ModelEntry, registry: ModelRegistry, vocab: VocabModel, n_ctx: int
    ) -> None:
        self.entry = entry
        self.registry = registry
        self.vocab = vocab
        self.name = entry.id
        self.n_ctx = n_ctx
        self.identity = entry.path
        self.architecture: str = vocab.architecture
        self.chat_template: str | None = vocab.chat_template
        self.special: SpecialTokens = vocab.special
        self._closed = False

    @property
    def loaded(self) -> ChatEngine | None:
        engine: ChatEngine | None = self.entry.engine if self.entry.state == "loaded" else None
        return engine

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self.vocab.tokenize(text, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.vocab.detokenize(tokens)

    def token_id(self, text: str) -> int | None:
        return self.vocab.token_id(text)

    def needs_load(self) -> bool:
        """True while a request would have to wait for the weights to load."""
        return self.entry.state != "loaded"

    def check_fits(self) -> None:
        """503 at once when the model cannot fit its budgets even alone."""
        self.registry.check_fits(self.entry)

    async def admit(
        self, is_disconnected: Disconnected | None = None, keep_alive: float | None = None
    ) -> Slot:
        """A slot on the loaded model; ``keep_alive`` applies once the slot is released."""
        if self._closed:
            raise AdmissionClosedError
        engine: ChatEngine = await self.registry.use(self.entry, is_disconnected)
        try:
            slot = await engine.admit(is_disconnected)
        except BaseException:
            self.registry.release(self.entry)
            raise
        return ManagedSlot(slot, self.registry, self.entry, keep_alive)

    @contextlib.asynccontextmanager
    async def hold(
        self, is_disconnected: Disconnected | None = None, keep_alive: float | None = None
    ) -> AsyncIterator[None]:
        """Keep the model loaded across several generations of one request (a map-reduce
        summary); ``keep_alive`` applies when the request ends, not after each part."""
        if self._closed:
            raise AdmissionClosedError
        await self.registry.use(self.entry, is_disconnected)
        try:
            yield
        finally:
            self.registry.release(self.entry, keep_alive)

    def generate(self, request: GenerationRequest) -> TokenStream:
        engine = self.loaded
        if engine is None:  # cannot happen while the caller holds a slot
            raise RuntimeError(f"model {self.name} is not loaded")
        return engine.generate(request)

    def check_grammar(self, json_schema: str) -> None:
        engine = self.loaded
        if engine is not None:
            engine.check_grammar(json_schema)
        else:
            self.vocab.check_grammar(json_schema)

    def admission_stats(self) -> AdmissionStats:
        engine = self.loaded
        return engine.admission_stats() if engine is not None else IDLE

    def close_admission(self) -> None:
        self._closed = True
        engine = self.loaded
        if engine is not None:
            engine.close_admission()

    def close(self) -> None:
        self.vocab.close()

    def describe(self) -> dict[str, Any]:
        return self.entry.describe()
