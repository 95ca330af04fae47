"""Which llama.cpp engine serves a chat model (CHAT_ENGINE, issue 12): the batched slots where
they fit the memory budget, one context where they do not (``auto``), or the one asked for."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from egemma.services.models.build import managed_chat
from egemma.services.models.managed import ManagedChatEngine
from egemma.services.models.registry import ModelRegistry, human
from egemma.settings import Settings

log = logging.getLogger(__name__)


def _load_llama(name: str, path: Path, settings: Settings, batched: bool) -> Any:
    """The llama.cpp engine: batched slots, or one context (single)."""
    if batched:
        from egemma.engines.batched import BatchedLlamaChatEngine

        state_dir = settings.server.data_dir / "kv-slots"
        return BatchedLlamaChatEngine.load_batched(
            name, path, settings.chat, settings.batch, state_dir
        )
    from egemma.engines.llamacpp import LlamaChatEngine

    return LlamaChatEngine.load(name, path, settings.chat)


def register_llama(
    registry: ModelRegistry, name: str, path: Path, settings: Settings
) -> ManagedChatEngine:
    """``path`` registered with the engine CHAT_ENGINE names. ``auto`` takes the batched slots
    when the weights and CHAT_PARALLEL contexts of KV fit the memory budgets (RAM, and the GPU's
    when there is one), else one context; ``batched`` over a budget is a startup error naming
    the settings (issue 12)."""
    mode = settings.batch.engine
    if mode != "single":
        engine = managed_chat(
            registry,
            name,
            path,
            settings.chat,
            "chat",
            load=lambda: _load_llama(name, path, settings, batched=True),
            kv_sequences=settings.batch.parallel,
        )
        if registry.fits_alone(engine.entry):
            return engine
        registry.entries.pop(engine.entry.id, None)
        engine.close()
        reason = _slots_over_budget(settings, registry, engine)
        if mode == "batched":
            raise ValueError(reason)
        log.info("chat model %s: %s; serving it from one context (CHAT_ENGINE=auto)", name, reason)
    return managed_chat(
        registry,
        name,
        path,
        settings.chat,
        "chat",
        load=lambda: _load_llama(name, path, settings, batched=False),
    )


def _slots_over_budget(settings: Settings, registry: ModelRegistry, engine: Any) -> str:
    entry = engine.entry
    kv = int(entry.detail.get("kv_cache_bytes", 0))
    n_ctx = entry.detail.get("n_ctx", settings.chat.n_ctx)
    need, budget, setting = entry.estimate, registry.budget, "MODEL_MEMORY_BUDGET"
    if need <= budget and registry.vram_budget is not None:  # the GPU's budget is the one short
        need, budget, setting = entry.vram_estimate, registry.vram_budget, "MODEL_VRAM_BUDGET"
    return (
        f"{settings.batch.parallel} KV slots of {n_ctx} tokens "
        f"(CHAT_PARALLEL x CHAT_N_CTX, {human(kv)}) and the weights need about "
        f"{human(need)}, more than {setting} ({human(budget)}); "
        f"lower CHAT_PARALLEL or CHAT_N_CTX, or raise {setting}"
    )
