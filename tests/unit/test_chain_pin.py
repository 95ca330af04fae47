"""The KV slot pin of a request (``Context.pin``): a ``previous_response_id`` chain maps every
turn to one key, its oldest stored response; a conversation pins by its id."""

from __future__ import annotations

from typing import Any

import pytest

from egemma.protocol.responses import ResponsesRequest
from egemma.services.responses.context import load_context

pytestmark = pytest.mark.anyio


class _Responses:
    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self.rows = rows

    async def get(self, rid: str) -> tuple[dict[str, Any], list[Any]] | None:
        row = self.rows.get(rid)
        return None if row is None else (row, [])


class _Store:
    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self.responses = _Responses(rows)


def _chain(*ids: str) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    previous = None
    for rid in ids:
        rows[rid] = {"id": rid, "output": [], "previous_response_id": previous}
        previous = rid
    return rows


async def _pin(store: _Store, **body: Any) -> str | None:
    context = await load_context(store, ResponsesRequest(input="hi", **body))  # type: ignore[arg-type]
    return context.pin


async def test_every_turn_of_a_chain_pins_to_its_root() -> None:
    store = _Store(_chain("resp_1", "resp_2", "resp_3"))
    assert await _pin(store) is None  # a first turn has nothing to pin to
    assert await _pin(store, previous_response_id="resp_1") == "resp_1"
    assert await _pin(store, previous_response_id="resp_2") == "resp_1"
    assert await _pin(store, previous_response_id="resp_3") == "resp_1"


async def test_a_deleted_older_link_makes_the_oldest_remaining_the_root() -> None:
    rows = _chain("resp_1", "resp_2", "resp_3")
    del rows["resp_1"]
    assert await _pin(_Store(rows), previous_response_id="resp_3") == "resp_2"


async def test_a_conversation_pins_by_its_id() -> None:
    class _Conversations:
        async def all_items(self, cid: str) -> list[Any]:
            return []

    store = _Store({})
    store.conversations = _Conversations()  # type: ignore[attr-defined]
    assert await _pin(store, conversation="conv_9") == "conv_9"
