"""Build the registry from settings: each configured GGUF becomes a ``ManagedChatEngine``
(vocabulary now, weights on first use or at startup per ``CHAT_PRELOAD``); the embedding model,
loaded at startup, is registered as pinned so its memory counts against the budget."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from egemma.engines.llamacpp_vocab import VocabModel
from egemma.errors import EgemmaError
from egemma.services.models.gguf import estimate
from egemma.services.models.managed import ManagedChatEngine
from egemma.services.models.registry import (
    ModelEntry,
    ModelKind,
    ModelRegistry,
    default_budget,
    machine_ram,
)
from egemma.settings import ChatSettings, ModelSettings, parse_bytes

log = logging.getLogger(__name__)


def build_registry(settings: ModelSettings) -> ModelRegistry:
    budget = parse_bytes(settings.model_memory_budget)
    if budget is None:
        budget = default_budget(machine_ram())
    return ModelRegistry(budget, settings.model_idle_ttl, settings.model_load_timeout)


def managed_chat(
    registry: ModelRegistry,
    name: str,
    path: Path,
    chat: ChatSettings,
    kind: ModelKind,
    load: Callable[[], Any] | None = None,
    kv_sequences: int = 1,
) -> ManagedChatEngine:
    """Register ``path`` (blocking: reads its header and vocabulary, not its weights).

    ``load`` builds the engine (default: one llama.cpp context); ``kv_sequences`` KV caches of
    ``n_ctx`` tokens each count against the budget (the batched engine's slots)."""
    from egemma.engines.llamacpp import LlamaChatEngine

    est = estimate(path, chat.n_ctx, chat.n_batch)
    kv_cache = est.kv_cache * kv_sequences
    total = est.total + kv_cache - est.kv_cache
    vocab = VocabModel(path)

    def load_single() -> Any:
        return LlamaChatEngine.load(name, path, chat)

    entry = registry.add(
        ModelEntry(
            id=name,
            kind=kind,
            path=str(path),
            estimate=total,
            load=load or load_single,
            detail={
                "weights_bytes": est.weights,
                "kv_cache_bytes": kv_cache,
                "compute_bytes": est.compute,
                "n_ctx": est.n_ctx,
            },
        )
    )
    return ManagedChatEngine(entry, registry, vocab, est.n_ctx)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def pinned_embedding(
    registry: ModelRegistry, name: str, folder: Path, engine: Any, measured: int, seconds: float
) -> None:
    """The embedding model the app holds: its ONNX folder size is its estimate."""
    entry = registry.add(
        ModelEntry(
            id=name,
            kind="embedding",
            path=str(folder),
            estimate=folder_bytes(folder),
            load=lambda: engine,
            pinned=True,
        )
    )
    entry.engine, entry.state, entry.measured, entry.load_seconds = (
        engine,
        "loaded",
        measured,
        seconds,
    )
    registry.loads += 1
    registry.load_seconds_total += seconds


def preload_ids(
    settings: ModelSettings, registry: ModelRegistry, main_chat: str | None
) -> list[str]:
    wanted = settings.preload()
    ids = []
    for entry in registry.entries.values():
        by_kind = (entry.kind == "chat" and entry.id == main_chat and "chat" in wanted) or (
            entry.kind != "chat" and entry.kind in wanted
        )
        if "none" not in wanted and ("all" in wanted or entry.id in wanted or by_kind):
            ids.append(entry.id)
    return ids


async def preload(settings: ModelSettings, registry: ModelRegistry, main_chat: str | None) -> None:
    """Load the ``CHAT_PRELOAD`` models now; one that cannot load is logged, the server serves."""
    for model_id in preload_ids(settings, registry, main_chat):
        entry = registry.entries[model_id]
        if entry.state == "loaded":
            continue
        try:
            await registry.load(model_id)
        except EgemmaError as exc:
            log.error("model %s not preloaded: %s", model_id, exc.message)
