"""WebSocket mode on /v1/responses with the shipped model on a real server (Open Responses)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import Response
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.e2e.conftest import KEY, SMOL
from tests.servers import LiveServer

pytestmark = pytest.mark.slow


def _url(server: LiveServer) -> str:
    return server.base_url.replace("http://", "ws://") + "/v1/responses"


def _socket(server: LiveServer) -> ClientConnection:
    return connect(_url(server), additional_headers={"Authorization": f"Bearer {KEY}"})


def _events(ws: ClientConnection) -> list[dict[str, Any]]:
    """The frames of one response, to its terminal event (or a lone error frame)."""
    events = []
    while True:
        event = json.loads(ws.recv(timeout=120))
        events.append(event)
        if event["type"] in ("response.completed", "response.incomplete", "response.failed"):
            return events
        if event["type"] == "error":
            return events


def _create(ws: ClientConnection, **fields: Any) -> list[dict[str, Any]]:
    ws.send(json.dumps({"type": "response.create", "model": SMOL, **fields}))
    return _events(ws)


def test_a_chain_of_two_store_false_responses(chat_server: LiveServer) -> None:
    with _socket(chat_server) as ws:
        first = _create(ws, input="My name is Ada.", store=False, max_output_tokens=8)
        kinds = [e["type"] for e in first]
        assert kinds[:2] == ["response.created", "response.in_progress"]
        assert kinds[-1] in ("response.completed", "response.incomplete")
        assert [e["sequence_number"] for e in first] == list(range(len(first)))
        done = Response.model_validate(first[-1]["response"])
        assert done.store is False

        second = _create(
            ws,
            input="What is my name?",
            store=False,
            previous_response_id=done.id,
            max_output_tokens=8,
        )
        assert second[-1]["type"] != "error", second[-1]
        last = Response.model_validate(second[-1]["response"])
        assert last.previous_response_id == done.id
        assert last.id != done.id
        # The first turn is in the second prompt: more input tokens than the question alone.
        alone = _create(ws, input="What is my name?", store=False, max_output_tokens=1)
        assert last.usage is not None
        assert last.usage.input_tokens > alone[-1]["response"]["usage"]["input_tokens"]


def test_bad_frames_are_error_frames_and_the_socket_stays_usable(chat_server: LiveServer) -> None:
    with _socket(chat_server) as ws:
        ws.send("not json")
        assert _events(ws)[0]["error"]["code"] == "invalid_json"
        ws.send(json.dumps({"type": "response.cancel"}))
        error = _events(ws)[0]
        assert error["status"] == 400
        assert error["error"]["param"] == "type"
        ws.send(json.dumps({"type": "response.create", "model": SMOL, "input": "x", "top_p": 7}))
        assert _events(ws)[0]["param"] == "top_p"
        unknown = _create(ws, input="x", previous_response_id="resp_nope")
        assert unknown[0]["status"] == 404
        ws.send(b"\x00binary")
        assert _events(ws)[0]["type"] == "error"
        ok = _create(ws, input="Hi", store=False, max_output_tokens=2)
        assert ok[-1]["type"] in ("response.completed", "response.incomplete")


def test_the_upgrade_needs_the_key(chat_server: LiveServer) -> None:
    with pytest.raises(InvalidStatus) as err:
        connect(_url(chat_server)).close()
    assert err.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        connect(_url(chat_server), additional_headers={"Authorization": "Bearer wrong"}).close()
