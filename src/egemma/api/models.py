"""``GET /v1/models``: every served model with its capabilities."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from egemma.api.deps import StateDep

router = APIRouter(tags=["models"])


@router.get("/v1/models", summary="List served models")
async def list_models(state: StateDep) -> dict[str, Any]:
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

    for name in engines.chat:
        add(name, "responses")
        add(name, "chat.completions")
    if engines.summary is not None:
        add(engines.summary.name, "summarize")
    if engines.embedding is not None:
        add(engines.embedding.name, "embeddings")
    if engines.gemini is not None:
        add(state.settings.gemini.default_model, "summarize")
    return {"object": "list", "data": list(data.values())}
