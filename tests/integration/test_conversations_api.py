"""The Conversations API through the official openai client against a real Hypercorn."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from asgi_lifespan import LifespanManager
from openai.types.conversations import Conversation, Message
from openai.types.responses import (
    ResponseFunctionToolCallItem,
    ResponseFunctionToolCallOutputItem,
    ResponseReasoningItem,
)

from egemma.app import create_app
from egemma.runtime import Engines
from egemma.settings import Settings
from egemma.store.sqlite import SqliteStore
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.servers import LiveServer


@pytest.fixture
def settings(store_backend: dict[str, str]) -> Settings:
    """Every test here runs on SQLite and on PostgreSQL."""
    return make_settings(WORKBENCH_API_KEY=TEST_KEY, **store_backend)


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{live_server.base_url}/v1", api_key=TEST_KEY, max_retries=0
    ) as sdk:
        yield sdk


def test_conversation_lifecycle(client: openai.OpenAI) -> None:
    conv = client.conversations.create(
        items=[{"role": "user", "content": "hello"}], metadata={"topic": "demo"}
    )
    assert isinstance(conv, Conversation)
    assert conv.id.startswith("conv_")
    assert conv.metadata == {"topic": "demo"}
    assert client.conversations.retrieve(conv.id) == conv

    updated = client.conversations.update(conv.id, metadata={"topic": "changed"})
    assert updated.metadata == {"topic": "changed"}
    assert updated.created_at == conv.created_at

    created = client.conversations.items.create(
        conv.id,
        items=[
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]},
            {"role": "assistant", "content": "b"},
        ],
    )
    assert [type(i) for i in created.data] == [Message, Message]
    assert created.data[1].content[0].type == "output_text"
    assert created.first_id == created.data[0].id

    listed = client.conversations.items.list(conv.id, order="asc")
    assert [i.content[0].text for i in listed.data] == ["hello", "a", "b"]  # type: ignore[union-attr]

    item = client.conversations.items.retrieve(created.data[0].id, conversation_id=conv.id)
    assert isinstance(item, Message)
    assert item.status == "completed"

    after_delete = client.conversations.items.delete(created.data[0].id, conversation_id=conv.id)
    assert isinstance(after_delete, Conversation)
    assert after_delete.id == conv.id
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(created.data[0].id, conversation_id=conv.id)

    deleted = client.conversations.delete(conv.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (conv.id, "conversation.deleted", True)
    with pytest.raises(openai.NotFoundError) as info:
        client.conversations.retrieve(conv.id)
    body: Any = info.value.body
    assert body["type"] == "invalid_request_error"
    assert body["code"] == "not_found"
    assert conv.id in body["message"]


def test_items_pagination_default_desc(client: openai.OpenAI) -> None:
    conv = client.conversations.create()
    texts = [f"m{i}" for i in range(7)]
    for chunk in (texts[:4], texts[4:]):
        client.conversations.items.create(
            conv.id, items=[{"role": "user", "content": t} for t in chunk]
        )
    page = client.conversations.items.list(conv.id, limit=3)
    assert [i.content[0].text for i in page.data] == ["m6", "m5", "m4"]  # type: ignore[union-attr]
    assert page.has_more
    assert page.last_id == page.data[-1].id
    everything = [i.content[0].text for i in client.conversations.items.list(conv.id, limit=3)]  # type: ignore[union-attr]
    assert everything == texts[::-1]  # the SDK follows after=last_id until has_more is false


def test_tool_and_reasoning_items_keep_official_types(client: openai.OpenAI) -> None:
    conv = client.conversations.create(
        items=[
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "think"}]},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ]
    )
    items = client.conversations.items.list(conv.id, order="asc").data
    assert [type(i) for i in items] == [
        ResponseReasoningItem,
        ResponseFunctionToolCallItem,
        ResponseFunctionToolCallOutputItem,
    ]
    assert items[1].id.startswith("fc_")  # type: ignore[union-attr]
    assert items[2].status == "completed"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("metadata", "param"),
    [
        ({f"k{i}": "v" for i in range(17)}, "metadata"),
        ({"k" * 65: "v"}, "metadata"),
        ({"k": "v" * 513}, "metadata.k"),
        ({"k": 3}, "metadata.k"),
    ],
)
def test_metadata_limits(client: openai.OpenAI, metadata: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.conversations.create(metadata=metadata)
    assert info.value.body["param"] == param  # type: ignore[index]
    conv = client.conversations.create(metadata={f"k{i}": "v" * 512 for i in range(16)})
    with pytest.raises(openai.BadRequestError):
        client.conversations.update(conv.id, metadata=metadata)


def test_bad_items_and_unknown_ids(client: openai.OpenAI) -> None:
    conv = client.conversations.create()
    with pytest.raises(openai.BadRequestError) as info:
        client.conversations.items.create(conv.id, items=[{"type": "web_search_call", "id": "x"}])
    assert info.value.body["param"] == "items[0].type"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as info:
        client.conversations.items.create(conv.id, items=[{"role": "user"}])
    assert info.value.body["param"] == "items[0].content"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.conversations.items.create(conv.id, items=[])
    with pytest.raises(openai.BadRequestError):
        client.conversations.items.create(
            conv.id, items=[{"role": "user", "content": str(i)} for i in range(21)]
        )
    with pytest.raises(openai.BadRequestError) as info:
        client.conversations.items.list(conv.id, limit=101)
    assert info.value.body["param"] == "limit"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.list("conv_missing")
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.create("conv_missing", items=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.delete("msg_missing", conversation_id=conv.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.delete("conv_missing")
    with pytest.raises(openai.NotFoundError):
        client.conversations.update("conv_missing", metadata={})


def test_duplicate_item_ids_are_400(client: openai.OpenAI) -> None:
    conv = client.conversations.create(items=[{"id": "msg_same", "role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as info:
        client.conversations.items.create(
            conv.id, items=[{"id": "msg_same", "role": "user", "content": "y"}]
        )
    assert "Duplicate item" in info.value.body["message"]  # type: ignore[index]


def test_item_reference_copies_a_stored_item(client: openai.OpenAI) -> None:
    first = client.conversations.create(items=[{"role": "user", "content": "original"}])
    [source] = client.conversations.items.list(first.id).data
    second = client.conversations.create(items=[{"type": "item_reference", "id": source.id}])
    [copied] = client.conversations.items.list(second.id).data
    assert copied == source
    with pytest.raises(openai.NotFoundError):
        client.conversations.create(items=[{"type": "item_reference", "id": "msg_nowhere"}])


def test_original_list_route(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.base_url, headers=AUTH) as http:
        ids = [http.post("/v1/conversations", json={}).json()["id"] for _ in range(3)]
        http.post(
            f"/v1/conversations/{ids[0]}/items", json={"items": [{"role": "user", "content": "x"}]}
        )
        listing = http.get("/v1/conversations", params={"limit": 2}).json()
        assert listing["object"] == "list"
        assert [c["id"] for c in listing["data"]] == [ids[2], ids[1]]
        assert listing["has_more"] is True
        rest = http.get("/v1/conversations", params={"after": listing["last_id"]}).json()
        assert [(c["id"], c["item_count"], c["items"]) for c in rest["data"]] == [(ids[0], 1, [])]
        assert http.get("/v1/conversations").status_code == 200
        assert httpx.get(f"{live_server.base_url}/v1/conversations").status_code == 401


def test_state_survives_a_server_restart(settings: Settings) -> None:
    def serve() -> LiveServer:
        server = LiveServer(create_app(settings, engines=Engines()))
        server.start()
        return server

    server = serve()
    try:
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=TEST_KEY) as sdk:
            conv = sdk.conversations.create(items=[{"role": "user", "content": "kept"}])
    finally:
        server.stop()
    server = serve()
    try:
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=TEST_KEY) as sdk:
            assert sdk.conversations.retrieve(conv.id) == conv
            [item] = sdk.conversations.items.list(conv.id).data
            assert item.content[0].text == "kept"  # type: ignore[union-attr]
    finally:
        server.stop()


@pytest.mark.anyio
async def test_locked_store_is_503_with_retry_after() -> None:
    import sqlite3

    settings = make_settings(WORKBENCH_API_KEY=TEST_KEY)  # SQLite's own lock

    path = settings.server.data_dir / "locked.db"
    store = SqliteStore(path, busy_timeout=0.2)
    app = create_app(settings, engines=Engines(), store=store)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as h:
            conv = (await h.post("/v1/conversations", json={})).json()
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                resp = await h.post(
                    f"/v1/conversations/{conv['id']}/items",
                    json={"items": [{"role": "user", "content": "x"}]},
                )
                assert resp.status_code == 503
                assert resp.headers["retry-after"] == "1"
                assert resp.json()["error"]["type"] == "server_error"
                assert (await h.get(f"/v1/conversations/{conv['id']}")).status_code == 200
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            resp = await h.post(
                f"/v1/conversations/{conv['id']}/items",
                json={"items": [{"role": "user", "content": "x"}]},
            )
            assert resp.status_code == 200
    await store.close()


def test_conversation_bucket_is_rate_limited() -> None:
    settings = make_settings(
        WORKBENCH_API_KEY=TEST_KEY,
        CONVERSATION_RATE_LIMIT_CALLS="2",
        CONVERSATION_RATE_LIMIT_SECONDS="60",
    )
    server = LiveServer(create_app(settings, engines=Engines()))
    server.start()
    try:
        with httpx.Client(base_url=server.base_url, headers=AUTH) as http:
            assert http.post("/v1/conversations", json={}).status_code == 200
            assert http.get("/v1/conversations").status_code == 200
            over = http.get("/v1/conversations")
            assert over.status_code == 429
            assert "Try again in" in over.json()["error"]["message"]
    finally:
        server.stop()
