"""``GET /personas``: the persona prompts ``/summarize`` can use."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from egemma.api.deps import PersonasDep

router = APIRouter(tags=["personas"])


@router.get("/personas", summary="List the persona prompts and their kind (code or docs)")
async def list_personas(registry: PersonasDep) -> dict[str, Any]:
    return {"object": "list", "data": registry.listing()}
