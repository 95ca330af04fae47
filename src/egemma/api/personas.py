"""``GET /personas`` and the persona registry dependency shared with ``/summarize``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from egemma.errors import InvalidRequestError
from egemma.personas import PersonaError, PersonaRegistry, UnknownPersonaError
from egemma.settings import Settings

router = APIRouter(tags=["personas"])


async def persona_registry(request: Request) -> PersonaRegistry:
    """The app's registry, scanned from ``PERSONAS_DIR`` on first use."""
    state = request.app.state
    registry: PersonaRegistry | None = getattr(state, "persona_registry", None)
    if registry is None:
        settings: Settings = state.settings
        registry = PersonaRegistry.from_directory(settings.summary.personas_dir)
        state.persona_registry = registry
    return registry


def persona_error(exc: PersonaError) -> InvalidRequestError:
    """The 400 for a persona that is unknown or was refused at open (no paths in the message)."""
    code = "unknown_persona" if isinstance(exc, UnknownPersonaError) else "persona_unavailable"
    return InvalidRequestError(exc.message, param="persona", code=code)


@router.get("/personas", summary="List the persona prompts and their kind (code or docs)")
async def list_personas(
    registry: Annotated[PersonaRegistry, Depends(persona_registry)],
) -> dict[str, Any]:
    return {"object": "list", "data": registry.listing()}
