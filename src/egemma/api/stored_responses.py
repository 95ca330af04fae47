"""Stored responses: retrieve, delete and list input items (``responses-protocol.md`` §6).

``POST /v1/responses`` and ``POST /v1/responses/input_tokens`` live in ``api/responses.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from egemma.api.deps import StoreDep, app_state, require_store
from egemma.api.sse import replay_stream
from egemma.errors import InvalidRequestError, NotFoundError
from egemma.ratelimit import rate_limit
from egemma.services.conversations import item_list
from egemma.services.responses.background import LIVE, POLL_SECONDS, reap
from egemma.store.base import Store

CANCEL_WAIT_SECONDS = 5.0

router = APIRouter(
    tags=["responses"], dependencies=[Depends(rate_limit("chat")), Depends(require_store)]
)


def _not_found(response_id: str) -> NotFoundError:
    return NotFoundError(
        f"Response with id '{response_id}' not found (it may have been deleted or created "
        "with store: false).",
        param="response_id",
    )


async def _stored(request: Request, store: Store, response_id: str) -> dict[str, Any]:
    """The stored response; a background one whose server died is marked failed first."""
    found = await store.responses.get(response_id)
    if found is None:
        raise _not_found(response_id)
    live = found[0].get("background") and found[0].get("status") in LIVE
    if live and await reap(app_state(request).store, response_id):
        found = await store.responses.get(response_id)
        if found is None:
            raise _not_found(response_id)
    return found[0]


@router.get("/v1/responses/{response_id}", summary="Retrieve a stored response")
async def retrieve_response(
    request: Request,
    store: StoreDep,
    response_id: str,
    stream: Annotated[bool, Query(description="Stream a background response's events.")] = False,
    starting_after: Annotated[
        int | None, Query(ge=-1, description="Resume after this sequence_number.")
    ] = None,
) -> Any:
    response = await _stored(request, store, response_id)
    if not stream:
        return response
    if not response.get("background"):
        raise InvalidRequestError(
            "Only background responses can be streamed again; this one was not created with "
            "background: true.",
            param="stream",
        )
    after = -1 if starting_after is None else starting_after
    return replay_stream(app_state(request), response_id, after)


@router.post("/v1/responses/{response_id}/cancel", summary="Cancel a background response")
async def cancel_response(request: Request, store: StoreDep, response_id: str) -> dict[str, Any]:
    response = await _stored(request, store, response_id)
    if not response.get("background"):
        raise InvalidRequestError(
            "Only responses created with background: true can be cancelled.",
            param="response_id",
        )
    if response.get("status") == "cancelled":
        return response
    if response.get("status") not in LIVE:
        raise InvalidRequestError(
            f"Cannot cancel a response with status '{response.get('status')}'.",
            param="response_id",
        )
    shared = app_state(request).store
    await shared.background.request_cancel(response_id)
    # The run stops within one poll (on whichever replica runs it) and stores its end.
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    while time.monotonic() < deadline:
        _, done = await shared.background.events_after(response_id, 1 << 62)
        if done:
            break
        await asyncio.sleep(POLL_SECONDS)
    return await _stored(request, store, response_id)


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
