"""Conversations: official objects and item lists over the store (``responses-protocol.md`` §7).

Items are normalized exactly like Responses input (``services/items.py``) so they keep their
official ``type``, ``status`` and content-part shapes; ``item_reference`` items are resolved to
the stored item they name. Metadata follows OpenAI's limits: at most 16 pairs, keys of at most 64
characters, string values of at most 512 characters.
"""

from __future__ import annotations

from typing import Any

from egemma.errors import InvalidRequestError, NotFoundError
from egemma.services.responses.items import Item, normalize_input, resolve_references
from egemma.store.base import Order, Page, Store

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_ITEMS_PER_CALL = 20


def validate_metadata(value: Any, *, param: str = "metadata") -> dict[str, str]:
    """OpenAI's metadata rules → 400 naming ``param`` when broken; None means ``{}``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{param} must be an object of string pairs.", param=param)
    if len(value) > MAX_METADATA_PAIRS:
        raise InvalidRequestError(
            f"{param} may hold at most {MAX_METADATA_PAIRS} key-value pairs; got {len(value)}.",
            param=param,
        )
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise InvalidRequestError(
                f"{param} keys may be at most {MAX_METADATA_KEY} characters; "
                f"'{key[:16]}…' has {len(key)}.",
                param=param,
            )
        if not isinstance(item, str):
            raise InvalidRequestError(f"{param}.{key} must be a string.", param=f"{param}.{key}")
        if len(item) > MAX_METADATA_VALUE:
            raise InvalidRequestError(
                f"{param}.{key} may be at most {MAX_METADATA_VALUE} characters; got {len(item)}.",
                param=f"{param}.{key}",
            )
    return dict(value)


def item_list(page: Page) -> dict[str, Any]:
    """The official cursor list shape (``ConversationItemList`` / input items)."""
    return {
        "object": "list",
        "data": page.data,
        "first_id": page.first_id,
        "last_id": page.last_id,
        "has_more": page.has_more,
    }


class ConversationService:
    """The eight official Conversations operations plus the original's list extension."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conversations = store.conversations

    async def create(self, items: Any, metadata: Any) -> Item:
        meta = validate_metadata(metadata)
        prepared = await self._prepare(items, allow_empty=True)
        return await self.conversations.create(meta, prepared)

    async def retrieve(self, conversation_id: str) -> Item:
        conversation = await self.conversations.get(conversation_id)
        if conversation is None:
            raise _conversation_not_found(conversation_id)
        return conversation

    async def update(self, conversation_id: str, metadata: Any) -> Item:
        meta = validate_metadata(metadata)
        conversation = await self.conversations.update(conversation_id, meta)
        if conversation is None:
            raise _conversation_not_found(conversation_id)
        return conversation

    async def delete(self, conversation_id: str) -> Item:
        if not await self.conversations.delete(conversation_id):
            raise _conversation_not_found(conversation_id)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    async def add_items(self, conversation_id: str, items: Any) -> Item:
        prepared = await self._prepare(items, allow_empty=False)
        added = await self.conversations.add_items(conversation_id, prepared)
        if added is None:
            raise _conversation_not_found(conversation_id)
        return item_list(Page(data=added, has_more=False))

    async def list_items(
        self, conversation_id: str, *, after: str | None, limit: int, order: Order
    ) -> Item:
        page = await self.conversations.list_items(
            conversation_id, after=after, limit=limit, order=order
        )
        if page is None:
            raise _conversation_not_found(conversation_id)
        return item_list(page)

    async def get_item(self, conversation_id: str, item_id: str) -> Item:
        item = await self.conversations.get_item(conversation_id, item_id)
        if item is None:
            await self.retrieve(conversation_id)  # 404 names the conversation when it is missing
            raise NotFoundError(
                f"Item with id '{item_id}' not found in conversation '{conversation_id}'."
            )
        return item

    async def delete_item(self, conversation_id: str, item_id: str) -> Item:
        if not await self.conversations.delete_item(conversation_id, item_id):
            await self.retrieve(conversation_id)
            raise NotFoundError(
                f"Item with id '{item_id}' not found in conversation '{conversation_id}'."
            )
        return await self.retrieve(conversation_id)

    async def list_conversations(self, *, limit: int, after: str | None) -> Item:
        page = await self.conversations.list_conversations(limit=limit, after=after)
        for entry in page.data:
            entry["items"] = []  # the original's list shape: counts, not contents
        return item_list(page)

    async def _prepare(self, items: Any, *, allow_empty: bool) -> list[Item]:
        if items is None:
            items = []
        if not isinstance(items, list):
            raise InvalidRequestError("items must be a list of items.", param="items")
        if not items and not allow_empty:
            raise InvalidRequestError("No items provided.", param="items")
        if len(items) > MAX_ITEMS_PER_CALL:
            raise InvalidRequestError(
                f"At most {MAX_ITEMS_PER_CALL} items may be added at a time; got {len(items)}.",
                param="items",
            )
        normalized = normalize_input(items, param="items")
        return await resolve_references(normalized, self.store.responses.find_item, param="items")


def _conversation_not_found(conversation_id: str) -> NotFoundError:
    return NotFoundError(f"Conversation with id '{conversation_id}' not found.")
