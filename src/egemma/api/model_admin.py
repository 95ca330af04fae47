"""``POST /v1/models/{model}/load`` and ``/unload``: an operator loads or frees a model now.

Only an admin key may (the key ``WORKBENCH_API_KEY`` is one); others get 404 as for any route
they cannot see. Unloading a model in use is 503 + ``Retry-After`` (it is never unloaded under a
running or queued generation); loading one that cannot fit is 503 naming ``MODEL_MEMORY_BUDGET``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Request

from egemma.api.deps import StateDep, principal
from egemma.errors import NotFoundError
from egemma.services.models.registry import ModelRegistry

router = APIRouter(tags=["models"])
MODEL_ID = Path(max_length=256, description="A configured model's id, as in GET /v1/models.")


def _registry(state: StateDep, request: Request) -> ModelRegistry:
    if not principal(request).admin:
        raise NotFoundError("Not found.")
    registry = state.engines.registry
    if registry is None:
        # No registry (engines injected by the embedder): no model here can be loaded or unloaded.
        raise NotFoundError(
            "This server does not manage its models: none can be loaded or unloaded."
        )
    return registry


@router.post("/v1/models/{model}/load", summary="Load a configured model now (admin key)")
async def load_model(state: StateDep, request: Request, model: str = MODEL_ID) -> dict[str, Any]:
    entry = await _registry(state, request).load(model)
    return {"object": "model.load", **entry.describe()}


@router.post("/v1/models/{model}/unload", summary="Unload an idle model now (admin key)")
async def unload_model(state: StateDep, request: Request, model: str = MODEL_ID) -> dict[str, Any]:
    entry = await _registry(state, request).unload(model)
    return {"object": "model.unload", **entry.describe()}
