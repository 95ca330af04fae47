"""Which model serves a request, and the items it sees: stored history, then the new input.

History comes from ``previous_response_id`` (the whole chain, oldest first) or a
``conversation``; ``item_reference`` inputs are resolved against stored items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from egemma.engines.base import ChatEngine
from egemma.errors import InvalidRequestError, NotFoundError, UnavailableError
from egemma.protocol.responses import ResponsesRequest
from egemma.runtime import Engines
from egemma.services.responses.items import normalize_input, resolve_references
from egemma.settings import ChatSettings
from egemma.store.base import Store

Item = dict[str, Any]
MAX_CHAIN = 1000


def resolve_engine(engines: Engines, chat: ChatSettings, requested: str | None) -> ChatEngine:
    """The engine serving ``requested`` (alias map applied); 404 lists the served models."""
    status = engines.capability("chat")
    if not engines.chat:
        reason = status.reason or status.status
        raise UnavailableError(
            f"The chat model is not available ({reason}).", code="model_unavailable"
        )
    if not requested:
        return engines.chat[engines.chat_default or next(iter(engines.chat))]
    name = chat.aliases().get(requested, requested)
    engine = engines.chat.get(name)
    if engine is None:
        served = ", ".join(sorted(engines.chat))
        raise NotFoundError(
            f"The model '{requested}' is not served here. Served models: {served}.",
            param="model",
            code="model_not_found",
        )
    return engine


@dataclass(frozen=True)
class Context:
    new_items: list[Item]
    items: list[Item]  # history, then the new items
    conversation_id: str | None
    chain_root: str | None = None  # the oldest stored response of a previous_response_id chain

    @property
    def pin(self) -> str | None:
        """The key that keeps this conversation on one KV slot (batched engine): the
        conversation, else the root of its response chain, so every turn of a chain of
        ``previous_response_id`` maps to one stable key."""
        return self.conversation_id or self.chain_root

    @property
    def history(self) -> list[Item]:
        return self.items[: len(self.items) - len(self.new_items)]


async def _history(store: Store, previous_id: str) -> tuple[list[Item], str]:
    """Items of the whole chain ending at ``previous_id``: inputs then outputs, oldest first;
    and the id of the oldest response still stored (the chain's root)."""
    chain: list[list[Item]] = []
    current: str | None = previous_id
    root = previous_id
    while current and len(chain) < MAX_CHAIN:
        found = await store.responses.get(current)
        if found is None:
            if not chain:
                raise NotFoundError(
                    f"Previous response with id '{previous_id}' not found.",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            break  # an older link was deleted: keep what remains
        response, inputs = found
        root = current
        chain.append([*inputs, *response.get("output", [])])
        current = response.get("previous_response_id")
    return [item for link in reversed(chain) for item in link], root


async def chain_items(store: Store, previous_id: str) -> list[Item]:
    """Every item of the stored chain ending at ``previous_id`` (404 when unknown)."""
    items, _root = await _history(store, previous_id)
    return items


async def load_context(store: Store, req: ResponsesRequest) -> Context:
    if req.input is None or req.input == [] or req.input == "":
        raise InvalidRequestError("input is required.", param="input")
    new_items = normalize_input(req.input)
    if any(item.get("type") == "item_reference" for item in new_items):
        new_items = await resolve_references(new_items, store.responses.find_item)
    conversation_id = conversation_id_of(req.conversation)
    if conversation_id and req.previous_response_id:
        raise InvalidRequestError(
            "previous_response_id and conversation cannot be used together.",
            param="conversation",
        )
    history: list[Item] = []
    root: str | None = None
    if req.previous_response_id:
        history, root = await _history(store, req.previous_response_id)
    elif conversation_id:
        items = await store.conversations.all_items(conversation_id)
        if items is None:
            raise NotFoundError(
                f"Conversation with id '{conversation_id}' not found.", param="conversation"
            )
        history = items
    return Context(new_items, [*history, *new_items], conversation_id, root)


def conversation_id_of(value: str | dict[str, Any] | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    cid = value.get("id")
    if not isinstance(cid, str):
        raise InvalidRequestError(
            'conversation must be an id or {"id": ...}.', param="conversation"
        )
    return cid
