"""Build the registry from settings: each configured GGUF becomes a ``ManagedChatEngine``
(vocabulary now, weights on first use or at startup per ``CHAT_PRELOAD``) and the exported
embedding folder a ``ManagedEmbeddingEngine`` and the cross-encoder's a ``ManagedRerankEngine``
(facts now, the ONNX session likewise)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from egemma.engines.llamacpp_vocab import VocabModel
from egemma.errors import EgemmaError
from egemma.services.models.embedding import Facts, ManagedEmbeddingEngine
from egemma.services.models.gguf import estimate
from egemma.services.models.managed import ManagedChatEngine
from egemma.services.models.registry import (
    ModelEntry,
    ModelKind,
    ModelRegistry,
    default_budget,
    machine_ram,
)
from egemma.services.models.rerank import ManagedRerankEngine, RerankFacts
from egemma.services.models.vram import default_vram_budget, detect_vram, split_estimate
from egemma.settings import ChatSettings, ModelSettings, parse_bytes

log = logging.getLogger(__name__)


def build_registry(settings: ModelSettings, n_gpu_layers: int = 0) -> ModelRegistry:
    """``n_gpu_layers`` (CHAT_N_GPU_LAYERS): with layers offloaded and a GPU visible, the
    default VRAM budget is its memory minus a margin."""
    budget = parse_bytes(settings.model_memory_budget)
    if budget is None:
        budget = default_budget(machine_ram())
    vram = parse_bytes(settings.model_vram_budget)
    if vram is None and n_gpu_layers != 0:
        vram = default_vram_budget(detect_vram())
    return ModelRegistry(
        budget, settings.model_idle_ttl, settings.model_load_timeout, vram_budget=vram
    )


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
    # Offloaded layers' weights and KV cache live on the GPU, counted against MODEL_VRAM_BUDGET
    # (only when there is one: a CPU build keeps everything in RAM whatever n_gpu_layers says).
    split = split_estimate(path, est, chat.n_gpu_layers if registry.vram_budget is not None else 0)
    kv_cache = est.kv_cache * kv_sequences
    ram = split.ram_bytes(kv_sequences)
    vram = split.vram_bytes(kv_sequences)
    vocab = VocabModel(path)

    def load_single() -> Any:
        return LlamaChatEngine.load(name, path, chat)

    entry = registry.add(
        ModelEntry(
            id=name,
            kind=kind,
            path=str(path),
            estimate=ram,
            vram_estimate=vram,
            load=load or load_single,
            detail={
                "weights_bytes": est.weights,
                "kv_cache_bytes": kv_cache,
                "compute_bytes": est.compute,
                "n_ctx": est.n_ctx,
                "gpu_layers": split.gpu_layers,
            },
        )
    )
    return ManagedChatEngine(entry, registry, vocab, est.n_ctx)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def managed_embedding(
    registry: ModelRegistry, name: str, folder: Path, facts: Facts, load: Callable[[], Any]
) -> ManagedEmbeddingEngine:
    """Register the exported embedding folder (its size is the estimate: the ONNX graph and
    tokenizer, held in RAM); ``load`` opens the session on first use or at startup."""
    entry = registry.add(
        ModelEntry(
            id=name,
            kind="embedding",
            path=str(folder),
            estimate=folder_bytes(folder),
            load=load,
            detail={"dimension": facts.dimension},
        )
    )
    return ManagedEmbeddingEngine(entry, registry, facts, name)


def managed_rerank(
    registry: ModelRegistry, name: str, folder: Path, facts: RerankFacts, load: Callable[[], Any]
) -> ManagedRerankEngine:
    """Register the exported cross-encoder folder the same way (its size is the estimate)."""
    if name in registry.entries:
        raise ValueError(f"the name {name!r} is already another model's; set RERANK_MODEL_NAME")
    entry = registry.add(
        ModelEntry(
            id=name,
            kind="rerank",
            path=str(folder),
            estimate=folder_bytes(folder),
            load=load,
            detail={"max_length": facts.max_seq_length},
        )
    )
    return ManagedRerankEngine(entry, registry, facts, name)


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
