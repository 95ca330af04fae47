"""``GET /v1/models``: every served model with its capabilities."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from egemma.api.deps import StateDep
from egemma.services.model_catalog import codex_model_info, serving_info
from egemma.services.models.registry import ModelRegistry
from egemma.services.prompting.formats import detect_family

router = APIRouter(tags=["models"])


@router.get("/v1/models", summary="List served models")
async def list_models(
    state: StateDep,
    client_version: str | None = Query(
        default=None,
        max_length=64,
        description="Sent by Codex CLI: the answer then also carries `models`, its model "
        "metadata (context window, reasoning levels, tool types).",
    ),
) -> dict[str, Any]:
    engines = state.engines
    created = state.started_at
    data: dict[str, dict[str, Any]] = {}

    def add(name: str, capability: str) -> None:
        entry = data.setdefault(
            name,
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "egemma",
                "capabilities": [],
            },
        )
        if capability not in entry["capabilities"]:
            entry["capabilities"].append(capability)

    for name, engine in engines.chat.items():
        add(name, "responses")
        add(name, "chat.completions")
        data[name].update(serving_info(engine))
    if engines.summary is not None:
        add(engines.summary.name, "summarize")
    if engines.embedding is not None:
        add(engines.embedding.name, "embeddings")
    if engines.reranker is not None:
        add(engines.reranker.name, "rerank")
    if engines.gemini is not None:
        add(state.settings.gemini.default_model, "summarize")
    registry = engines.registry
    _add_registry_fields(data, registry)
    listing: dict[str, Any] = {"object": "list", "data": list(data.values())}
    if registry is not None:
        listing["memory_budget_bytes"] = registry.budget
        listing["memory_used_bytes"] = registry.used
        listing["vram_budget_bytes"] = registry.vram_budget
        listing["vram_used_bytes"] = registry.used_vram
    if client_version is not None:
        chat = state.settings.chat
        listing["models"] = [
            codex_model_info(
                engine,
                harmony=detect_family(engine, chat.prompt_format) == "harmony",
                effort=chat.reasoning_effort,
                priority=priority,
            )
            for priority, engine in enumerate(engines.chat.values())
        ]
    return listing


def _add_registry_fields(data: dict[str, dict[str, Any]], registry: ModelRegistry | None) -> None:
    """Extra fields only (OpenAI's shape stays): each configured model's state and memory;
    ``available`` is false when it cannot fit ``MODEL_MEMORY_BUDGET`` (or, with layers on a
    GPU, ``MODEL_VRAM_BUDGET``) even alone."""
    if registry is None:
        return
    for entry in registry.entries.values():
        if entry.id in data:
            described = entry.describe()
            data[entry.id].update(
                state=described["state"],
                loaded=described["loaded"],
                available=registry.fits_alone(entry),
                memory=described["memory"],
                keep_alive=described["keep_alive"],
            )
