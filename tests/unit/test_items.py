"""Input normalization: every shape of responses-protocol.md §3 and §10 → official items."""

from __future__ import annotations

import re
from typing import Any

import pytest

from egemma.errors import InvalidRequestError, NotFoundError
from egemma.services.responses.items import normalize_input, normalize_item, resolve_references


def _bad(value: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        normalize_input(value)
    return info.value


def test_string_input_is_one_user_message() -> None:
    [item] = normalize_input("hello")
    assert re.fullmatch(r"msg_[0-9a-f]{48}", item["id"])
    assert item == {
        "id": item["id"],
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": "hello"}],
    }


@pytest.mark.parametrize("role", ["user", "system", "developer"])
def test_typeless_easy_message_with_string_content(role: str) -> None:
    [item] = normalize_input([{"role": role, "content": "hi"}])
    assert item["type"] == "message"
    assert item["role"] == role
    assert item["status"] == "completed"
    assert item["content"] == [{"type": "input_text", "text": "hi"}]


def test_assistant_string_content_becomes_output_text() -> None:
    [item] = normalize_input([{"role": "assistant", "content": "sure"}])
    assert item["content"] == [
        {"type": "output_text", "text": "sure", "annotations": [], "logprobs": []}
    ]


def test_message_with_part_list_keeps_parts() -> None:
    [item] = normalize_input(
        [
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AA=="},
                    {"type": "input_file", "file_id": "file_1"},
                ],
            }
        ]
    )
    assert item["content"] == [
        {"type": "input_text", "text": "look"},
        {"type": "input_image", "detail": "auto", "image_url": "data:image/png;base64,AA=="},
        {"type": "input_file", "file_id": "file_1"},
    ]


def test_replayed_assistant_output_with_nulls_keeps_its_id() -> None:
    [item] = normalize_input(
        [
            {
                "id": "msg_abc",
                "type": "message",
                "role": "assistant",
                "status": None,
                "content": [
                    {"type": "output_text", "text": "4", "annotations": None, "logprobs": None},
                    {"type": "refusal", "refusal": "no"},
                ],
            }
        ]
    )
    assert item["id"] == "msg_abc"
    assert item["status"] == "completed"
    assert item["content"] == [
        {"type": "output_text", "text": "4", "annotations": [], "logprobs": []},
        {"type": "refusal", "refusal": "no"},
    ]


def test_text_parts_are_coerced_to_the_role_text_type() -> None:
    user, assistant = normalize_input(
        [
            {"role": "user", "content": [{"type": "text", "text": "a"}]},
            {"role": "assistant", "content": [{"type": "input_text", "text": "b"}]},
        ]
    )
    assert user["content"] == [{"type": "input_text", "text": "a"}]
    assert assistant["content"][0]["type"] == "output_text"


def test_function_call_keeps_given_id_or_gets_fc() -> None:
    given, fresh = normalize_input(
        [
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
                "status": None,
            },
            {"type": "function_call", "call_id": "call_2", "name": "f", "arguments": {"x": 1}},
        ]
    )
    assert given == {
        "id": "fc_1",
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
        "status": "completed",
    }
    assert fresh["id"].startswith("fc_")
    assert fresh["arguments"] == '{"x": 1}'


def test_function_call_output_string_and_parts() -> None:
    text, parts = normalize_input(
        [
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "call_2",
                "output": [{"type": "input_text", "text": "ok"}],
            },
        ]
    )
    assert text["id"].startswith("fco_")
    assert text == {
        "id": text["id"],
        "type": "function_call_output",
        "call_id": "call_1",
        "output": "sunny",
        "status": "completed",
    }
    assert parts["output"] == [{"type": "input_text", "text": "ok"}]


def test_reasoning_summary_only() -> None:
    [item] = normalize_input(
        [{"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "t"}]}]
    )
    assert item == {
        "id": "rs_1",
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "t"}],
        "status": "completed",
    }


def test_reasoning_content_only() -> None:
    [item] = normalize_input(
        [{"type": "reasoning", "content": [{"type": "reasoning_text", "text": "think"}]}]
    )
    assert item["id"].startswith("rs_")
    assert item["summary"] == []
    assert item["content"] == [{"type": "reasoning_text", "text": "think"}]


def test_reasoning_encrypted_content_only() -> None:
    [item] = normalize_input(
        [{"type": "reasoning", "id": "rs_2", "summary": None, "encrypted_content": "gAAA"}]
    )
    assert item["summary"] == []
    assert item["encrypted_content"] == "gAAA"
    assert "content" not in item


@pytest.mark.parametrize("raw", [{"type": "item_reference", "id": "msg_x"}, {"id": "msg_x"}])
def test_item_reference_is_left_for_the_caller(raw: dict[str, Any]) -> None:
    assert normalize_input([raw]) == [{"type": "item_reference", "id": "msg_x"}]


def test_agents_sdk_history_round_trip() -> None:
    history = [
        {"content": "weather in Paris?", "role": "user"},
        {"id": "rs_a", "type": "reasoning", "summary": [], "content": None},
        {
            "id": "fc_a",
            "type": "function_call",
            "call_id": "call_a",
            "name": "weather",
            "arguments": "{}",
            "status": "completed",
        },
        {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
    ]
    items = normalize_input(history)
    assert [i["type"] for i in items] == [
        "message",
        "reasoning",
        "function_call",
        "function_call_output",
    ]
    assert all(i["status"] == "completed" for i in items)
    assert normalize_input(items) == items  # normalizing official items is the identity


@pytest.mark.parametrize(
    ("value", "param"),
    [
        (42, "input"),
        (["hi"], "input[0]"),
        ([{"content": "x"}], "input[0].type"),
        ([{"role": "tool", "content": "x"}], "input[0].role"),
        ([{"role": "user"}], "input[0].content"),
        (
            [{"role": "user", "content": [{"type": "refusal", "refusal": "x"}]}],
            "input[0].content[0].type",
        ),
        ([{"role": "user", "content": [{"type": "input_text"}]}], "input[0].content[0].text"),
        ([{"role": "user", "content": [{"type": "input_image"}]}], "input[0].content[0].image_url"),
        ([{"role": "user", "content": "x", "status": "weird"}], "input[0].status"),
        ([{"type": "function_call", "name": "f", "arguments": "{}"}], "input[0].call_id"),
        ([{"type": "function_call", "call_id": "c", "arguments": "{}"}], "input[0].name"),
        (
            [{"type": "function_call", "call_id": "c", "name": "f", "arguments": 3}],
            "input[0].arguments",
        ),
        ([{"type": "function_call_output", "call_id": "c"}], "input[0].output"),
        ([{"type": "function_call_output", "output": "x"}], "input[0].call_id"),
        (
            [{"type": "reasoning", "summary": [{"type": "reasoning_text", "text": "x"}]}],
            "input[0].summary[0]",
        ),
        ([{"type": "reasoning", "encrypted_content": 5}], "input[0].encrypted_content"),
        ([{"type": "item_reference"}], "input[0].id"),
        ([{"type": "banana"}], "input[0].type"),
        (
            [
                {"role": "user", "content": "x", "id": "m1"},
                {"role": "user", "content": "y", "id": "m1"},
            ],
            "input[1].id",
        ),
    ],
)
def test_malformed_items_name_the_field(value: Any, param: str) -> None:
    err = _bad(value)
    assert err.param == param
    assert err.status_code == 400


@pytest.mark.parametrize(
    "kind",
    [
        "web_search_call",
        "computer_call",
        "mcp_call",
        "mcp_list_tools",
        "file_search_call",
        "local_shell_call",
    ],
)
def test_hosted_tool_items_are_refused_by_type(kind: str) -> None:
    err = _bad([{"type": kind, "id": "x"}])
    assert err.param == "input[0].type"
    assert kind in err.message
    assert "only function and custom tools" in err.message


def test_param_prefix_is_configurable() -> None:
    with pytest.raises(InvalidRequestError) as info:
        normalize_input([{"role": "nobody", "content": "x"}], param="items")
    assert info.value.param == "items[0].role"
    with pytest.raises(InvalidRequestError):
        normalize_item("x", param="items[0]")


@pytest.mark.anyio
async def test_resolve_references() -> None:
    stored = {
        "id": "msg_s",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": "old"}],
    }

    async def find(item_id: str) -> dict[str, Any] | None:
        return stored if item_id == "msg_s" else None

    items = normalize_input([{"id": "msg_s"}, {"role": "user", "content": "new"}])
    resolved = await resolve_references(items, find)
    assert resolved[0] == stored
    assert resolved[1]["content"][0]["text"] == "new"
    with pytest.raises(NotFoundError) as info:
        await resolve_references(normalize_input([{"id": "msg_missing"}]), find)
    assert info.value.param == "input[0].id"
