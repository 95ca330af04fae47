"""The Conversations API (official routes) plus the original's ``GET /v1/conversations`` list."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query

from egemma.api.deps import ConversationsDep as Service
from egemma.api.deps import require_store
from egemma.protocol.conversations import (
    ConversationCreateRequest,
    ConversationItemsCreateRequest,
    ConversationUpdateRequest,
)
from egemma.ratelimit import rate_limit

router = APIRouter(
    tags=["conversations"],
    dependencies=[Depends(rate_limit("conversation")), Depends(require_store)],
)

Limit = Annotated[int, Query(ge=1, le=100, description="Page size, 1 to 100.")]
After = Annotated[str | None, Query(description="Item id to continue after.")]
OrderQuery = Annotated[Literal["asc", "desc"], Query(description="asc: oldest first.")]


@router.post("/v1/conversations", summary="Create a conversation")
async def create_conversation(
    service: Service,
    body: Annotated[ConversationCreateRequest | None, Body()] = None,
) -> dict[str, Any]:
    body = body or ConversationCreateRequest()
    return await service.create(body.items, body.metadata)


@router.get("/v1/conversations", summary="List conversations (eGemma extension)")
async def list_conversations(
    service: Service, limit: Limit = 20, after: After = None
) -> dict[str, Any]:
    return await service.list_conversations(limit=limit, after=after)


@router.get("/v1/conversations/{conversation_id}", summary="Retrieve a conversation")
async def retrieve_conversation(service: Service, conversation_id: str) -> dict[str, Any]:
    return await service.retrieve(conversation_id)


@router.post("/v1/conversations/{conversation_id}", summary="Update a conversation's metadata")
async def update_conversation(
    service: Service, conversation_id: str, body: ConversationUpdateRequest
) -> dict[str, Any]:
    return await service.update(conversation_id, body.metadata)


@router.delete("/v1/conversations/{conversation_id}", summary="Delete a conversation")
async def delete_conversation(service: Service, conversation_id: str) -> dict[str, Any]:
    return await service.delete(conversation_id)


@router.post("/v1/conversations/{conversation_id}/items", summary="Append items")
async def create_items(
    service: Service, conversation_id: str, body: ConversationItemsCreateRequest
) -> dict[str, Any]:
    return await service.add_items(conversation_id, body.items)


@router.get("/v1/conversations/{conversation_id}/items", summary="List items")
async def list_items(
    service: Service,
    conversation_id: str,
    after: After = None,
    limit: Limit = 20,
    order: OrderQuery = "desc",
) -> dict[str, Any]:
    return await service.list_items(conversation_id, after=after, limit=limit, order=order)


@router.get("/v1/conversations/{conversation_id}/items/{item_id}", summary="Retrieve an item")
async def retrieve_item(service: Service, conversation_id: str, item_id: str) -> dict[str, Any]:
    return await service.get_item(conversation_id, item_id)


@router.delete(
    "/v1/conversations/{conversation_id}/items/{item_id}",
    summary="Delete an item; returns the conversation",
)
async def delete_item(service: Service, conversation_id: str, item_id: str) -> dict[str, Any]:
    return await service.delete_item(conversation_id, item_id)
