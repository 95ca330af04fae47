"""GET/DELETE /v1/responses/{id} and input_items, on rows written through the store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseOutputMessage

from egemma.services.responses.items import normalize_input
from egemma.settings import Settings
from egemma.store.factory import store_from_settings
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.servers import LiveServer


def _response(rid: str, text: str) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": 1_700_000_000,
        "completed_at": 1_700_000_001,
        "status": "completed",
        "model": "smollm2-135m-instruct",
        "output": [
            {
                "id": f"msg_out_{rid}",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [
                    {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                ],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "previous_response_id": None,
        "temperature": 0.3,
        "top_p": 0.95,
        "usage": {
            "input_tokens": 5,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 1,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 6,
        },
    }


@pytest.fixture
def stored(settings: Settings) -> list[dict[str, Any]]:
    """A response with five input items, written through a store on the app's database file."""
    inputs = normalize_input([{"role": "user", "content": f"in{i}"} for i in range(5)])

    async def write() -> None:
        store = store_from_settings(settings)
        await store.responses.save(_response("resp_stored", "4"), inputs)
        await store.close()

    asyncio.run(write())
    return inputs


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


def test_retrieve_parses_as_an_official_response(
    stored: list[dict[str, Any]], client: openai.OpenAI
) -> None:
    response = client.responses.retrieve("resp_stored")
    assert isinstance(response, Response)
    assert response.id == "resp_stored"
    assert isinstance(response.output[0], ResponseOutputMessage)
    assert response.output_text == "4"


def test_input_items_paginate_desc_by_default(
    stored: list[dict[str, Any]], client: openai.OpenAI
) -> None:
    ids = [i["id"] for i in stored]
    page = client.responses.input_items.list("resp_stored", limit=2)
    assert [i.id for i in page.data] == [ids[4], ids[3]]
    assert page.has_more
    assert [i.id for i in client.responses.input_items.list("resp_stored", limit=2)] == ids[::-1]
    asc = client.responses.input_items.list("resp_stored", order="asc", after=ids[1], limit=2)
    assert [i.id for i in asc.data] == ids[2:4]
    first = asc.data[0]
    assert first.type == "message"
    assert first.content[0].text == "in2"  # type: ignore[union-attr]


def test_input_items_list_shape_and_errors(
    stored: list[dict[str, Any]], live_server: LiveServer
) -> None:
    with httpx.Client(base_url=live_server.base_url, headers=AUTH) as http:
        body = http.get("/v1/responses/resp_stored/input_items", params={"limit": 5}).json()
        assert body["object"] == "list"
        assert body["first_id"] == stored[4]["id"]
        assert body["last_id"] == stored[0]["id"]
        assert body["has_more"] is False
        bad = http.get("/v1/responses/resp_stored/input_items", params={"limit": 0})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "limit"
        bad = http.get("/v1/responses/resp_stored/input_items", params={"order": "up"})
        assert bad.status_code == 400
        bad = http.get("/v1/responses/resp_stored/input_items", params={"after": "msg_nope"})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "after"
        missing = http.get("/v1/responses/resp_missing/input_items")
        assert missing.status_code == 404
        assert httpx.get(f"{live_server.base_url}/v1/responses/resp_stored").status_code == 401


def test_delete_then_404(stored: list[dict[str, Any]], client: openai.OpenAI) -> None:
    http = client.with_raw_response.responses.delete("resp_stored")
    assert http.http_response.json() == {"id": "resp_stored", "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve("resp_stored")
    body: Any = info.value.body
    assert body["code"] == "not_found"
    assert "resp_stored" in body["message"]
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_stored")
    with pytest.raises(openai.NotFoundError):
        client.responses.delete("resp_stored")


def test_unknown_response_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_never")
