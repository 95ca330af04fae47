"""Hostile and unusual JSON Schemas through the real llama.cpp grammar compiler: what it cannot
build is a 400 before admission (never a 200 ``failed`` after the model ran, never a hang or a
memory bomb), and JSON Schema's unanchored patterns still constrain decoding."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from tests.e2e.conftest import KEY, SMOL
from tests.servers import LiveServer

AUTH = {"Authorization": f"Bearer {KEY}"}


def _tool_body(pattern_or_schema: str | dict[str, Any]) -> dict[str, Any]:
    prop = (
        {"type": "string", "pattern": pattern_or_schema}
        if isinstance(pattern_or_schema, str)
        else pattern_or_schema
    )
    return {
        "model": SMOL,
        "input": "Call the tool.",
        "tools": [
            {
                "type": "function",
                "name": "f",
                "parameters": {"type": "object", "properties": {"a": prop}, "required": ["a"]},
            }
        ],
        "tool_choice": "required",
        "max_output_tokens": 60,
    }


def _post(server: LiveServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/responses", json=body, headers=AUTH, timeout=120)


@pytest.mark.parametrize(
    ("prop", "code"),
    [
        ("^[[:alpha:]]$", "unsupported_schema"),  # hangs llama.cpp's converter
        ("^a]$", "unsupported_schema"),  # so does a stray ']'
        ("^(?=a)b$", "unsupported_schema"),  # lookahead: the converter refuses it
        ("[a-", "invalid_schema"),
        ({"type": "string", "minLength": 100_000_000}, "schema_too_complex"),
        ({"type": "bogus"}, "invalid_schema"),
    ],
    ids=["posix-class", "stray-bracket", "lookahead", "broken", "min-length-bomb", "bogus-type"],
)
def test_schemas_the_grammar_cannot_take_are_400(
    chat_server: LiveServer, prop: str | dict[str, Any], code: str
) -> None:
    resp = _post(chat_server, _tool_body(prop))
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == code
    assert httpx.get(f"{chat_server.base_url}/health", timeout=5).status_code == 200


def test_text_format_lookahead_is_400(chat_server: LiveServer) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^(?=x)x$"}}}
    body = {
        "model": SMOL,
        "input": "hi",
        "text": {"format": {"type": "json_schema", "name": "o", "schema": schema}},
    }
    resp = _post(chat_server, body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "unsupported_schema"


def test_an_unanchored_pattern_still_constrains_the_call(chat_server: LiveServer) -> None:
    """JSON Schema patterns match anywhere; llama.cpp's converter wants them anchored (it used
    to fail every such generation). The grammar now allows only strings containing a match."""
    resp = _post(chat_server, _tool_body("[0-9]{3}"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] in ("completed", "incomplete"), body.get("error")
    if body["status"] == "completed":
        call = body["output"][-1]
        args = json.loads(call["arguments"])
        jsonschema.validate(args, {"properties": {"a": {"pattern": "[0-9]{3}"}}})
