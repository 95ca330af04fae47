"""Stored responses: retrieve, delete and list input items (``responses-protocol.md`` §6).

``POST /v1/responses`` and ``POST /v1/responses/input_tokens`` live in ``api/responses.py``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from egemma.api.deps import StoreDep, require_store
from egemma.errors import NotFoundError
from egemma.ratelimit import rate_limit
from egemma.services.conversations import item_list

router = APIRouter(
    tags=["responses"], dependencies=[Depends(rate_limit("chat")), Depends(require_store)]
)


def _not_found(response_id: str) -> NotFoundError:
    return NotFoundError(
        f"Response with id '{response_id}' not found (it may have been deleted or created "
        "with store: false).",
        param="response_id",
    )


@router.get("/v1/responses/{response_id}", summary="Retrieve a stored response")
async def retrieve_response(store: StoreDep, response_id: str) -> dict[str, Any]:
    found = await store.responses.get(response_id)
    if found is None:
        raise _not_found(response_id)
    return found[0]


@router.delete("/v1/responses/{response_id}", summary="Delete a stored response")
async def delete_response(store: StoreDep, response_id: str) -> dict[str, Any]:
    if not await store.responses.delete(response_id):
        raise _not_found(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


@router.get("/v1/responses/{response_id}/input_items", summary="List a response's input items")
async def list_input_items(
    store: StoreDep,
    response_id: str,
    after: Annotated[str | None, Query(description="Item id to continue after.")] = None,
    before: Annotated[str | None, Query(description="Item id to list before.")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size, 1 to 100.")] = 20,
    order: Annotated[Literal["asc", "desc"], Query(description="asc: oldest first.")] = "desc",
) -> dict[str, Any]:
    page = await store.responses.list_input_items(
        response_id, after=after, before=before, limit=limit, order=order
    )
    if page is None:
        raise _not_found(response_id)
    return item_list(page)
