"""The Responses API with the shipped models through openai-python on a real server.

Tiny models: these assert protocol shape and validity, never answer quality."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import GEMMA, KEY, SMOL
from tests.servers import LiveServer

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 30}},
    "required": ["answer"],
    "additionalProperties": False,
}


def raw_events(server: LiveServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    events = []
    with (
        httpx.Client(base_url=server.base_url, timeout=120) as http,
        http.stream(
            "POST",
            "/v1/responses",
            json={**body, "stream": True},
            headers={"Authorization": f"Bearer {KEY}"},
        ) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert event["type"] == name
                events.append(event)
    return events


def check_sequence(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Canonical order, sequence numbers from 0, every added has its done, deltas add up."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    assert events[1]["type"] == "response.in_progress"
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    open_items: dict[str, str] = {}
    texts: dict[str, str] = {}
    for event in events[2:-1]:
        kind = event["type"]
        if kind == "response.output_item.added":
            open_items[event["item"]["id"]] = event["item"]["type"]
            texts[event["item"]["id"]] = ""
        elif kind.endswith(".delta"):
            assert event["item_id"] in open_items, "delta before output_item.added"
            if kind == "response.output_text.delta":
                assert event["logprobs"] == []
            if kind != "response.reasoning_summary_text.delta":
                texts[event["item_id"]] += event["delta"]
        elif kind == "response.output_text.done":
            assert texts[event["item_id"]] == event["text"]
        elif kind == "response.function_call_arguments.done":
            assert texts[event["item_id"]] == event["arguments"]
        elif kind == "response.output_item.done":
            assert open_items.pop(event["item"]["id"]) == event["item"]["type"]
            assert event["item"]["status"] in ("completed", "incomplete")
    assert not open_items, "an output_item.added without its done"
    final = events[-1]["response"]
    assert [i["id"] for i in final["output"]] == list(texts)
    return final


def test_plain_text(oai: OpenAI) -> None:
    resp = oai.responses.create(model=SMOL, input="Say hello.", max_output_tokens=24, temperature=0)
    assert resp.id.startswith("resp_")
    assert resp.status in ("completed", "incomplete")
    message = resp.output[-1]
    assert message.type == "message"
    assert message.id.startswith("msg_")
    assert message.content[0].type == "output_text"
    assert resp.output_text
    assert resp.usage is not None
    assert resp.usage.input_tokens > 0
    assert 0 < resp.usage.output_tokens <= 24
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert resp.model == SMOL


def test_incomplete_on_max_output_tokens(oai: OpenAI) -> None:
    resp = oai.responses.create(
        model=SMOL, input="Write a long story about the sea.", max_output_tokens=5
    )
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output[-1].status == "incomplete"


def test_stream_canonical_sequence(chat_server: LiveServer) -> None:
    events = raw_events(
        chat_server, {"model": SMOL, "input": "Count to five.", "max_output_tokens": 40}
    )
    final = check_sequence(events)
    types = [e["type"] for e in events]
    assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert final["status"] in ("completed", "incomplete")


def test_sdk_stream_helper_completes(oai: OpenAI) -> None:
    with oai.responses.stream(
        model=SMOL,
        input="Answer in JSON: what colour is the sky?",
        text={
            "format": {
                "type": "json_schema",
                "name": "answer",
                "schema": ANSWER_SCHEMA,
                "strict": True,
            }
        },
        max_output_tokens=200,
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.output_text.delta" in kinds
    assert final.status == "completed"
    jsonschema.validate(json.loads(final.output_text), ANSWER_SCHEMA)


def test_json_schema_strict_non_stream(oai: OpenAI) -> None:
    resp = oai.responses.create(
        model=GEMMA,
        input="Give a short answer as JSON.",
        text={
            "format": {
                "type": "json_schema",
                "name": "answer",
                "schema": ANSWER_SCHEMA,
                "strict": True,
            }
        },
        max_output_tokens=200,
    )
    assert resp.status == "completed"
    jsonschema.validate(json.loads(resp.output_text), ANSWER_SCHEMA)


def test_forced_tool_call_streamed_and_valid(chat_server: LiveServer) -> None:
    events = raw_events(
        chat_server,
        {
            "model": SMOL,
            "input": "What is the weather in Paris?",
            "tools": [WEATHER],
            "tool_choice": "required",
            "max_output_tokens": 100,
        },
    )
    final = check_sequence(events)
    assert final["status"] == "completed"
    call = final["output"][-1]
    assert call["type"] == "function_call"
    assert call["name"] == "get_weather"
    assert call["id"].startswith("fc_")
    assert call["call_id"].startswith("call_")
    jsonschema.validate(json.loads(call["arguments"]), WEATHER["parameters"])
    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert len(deltas) > 1, "arguments should stream token by token"


def test_named_tool_choice_on_the_template_less_model(oai: OpenAI) -> None:
    resp = oai.responses.create(
        model=GEMMA,
        input="Weather in Oslo",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=100,
    )
    call = resp.output[-1]
    assert call.type == "function_call"
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])


def test_tool_round_trip_with_previous_response_id(oai: OpenAI) -> None:
    first = oai.responses.create(
        model=SMOL,
        input="Weather in Rome?",
        tools=[WEATHER],
        tool_choice="required",
        max_output_tokens=100,
    )
    call = first.output[-1]
    assert call.type == "function_call"
    second = oai.responses.create(
        model=SMOL,
        previous_response_id=first.id,
        tools=[WEATHER],
        max_output_tokens=30,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}],
    )
    assert second.status in ("completed", "incomplete")
    assert second.previous_response_id == first.id
    assert second.usage is not None
    assert second.usage.input_tokens_details.cached_tokens > 0  # the first turn's KV prefix
    third = oai.responses.create(
        model=SMOL, previous_response_id=second.id, input="Thanks!", max_output_tokens=10
    )
    assert third.status in ("completed", "incomplete")
    items = oai.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["function_call_output"]


def test_replayed_history_without_types(oai: OpenAI) -> None:
    """What the Agents SDK sends: typeless messages, replayed output with nulls, reasoning."""
    resp = oai.responses.create(
        model=SMOL,
        max_output_tokens=8,
        store=False,
        input=[
            {"role": "user", "content": "Hi"},
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": None,
                "content": [
                    {"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": None}
                ],
            },
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": "greeting"}],
            },
            {"role": "user", "content": [{"type": "input_text", "text": "Bye"}]},
        ],
    )
    assert resp.status in ("completed", "incomplete")
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(resp.id)  # store: false is served but not kept


def test_model_selection_aliases_and_404(oai: OpenAI) -> None:
    assert oai.responses.create(model="gpt-4o", input="Hi", max_output_tokens=4).model == "gpt-4o"
    with pytest.raises(openai.NotFoundError) as err:
        oai.responses.create(model="no-such-model", input="Hi")
    body = err.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found"
    assert SMOL in body["message"]
    assert GEMMA in body["message"]
    served = {m.id for m in oai.models.list().data}
    assert {SMOL, GEMMA} <= served


def test_bad_input_names_the_param(oai: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.responses.create(model=SMOL, input=[{"role": "user", "content": 5}])
    assert err.value.body["param"].startswith("input[0]")  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        oai.responses.create(model=SMOL, input="x " * 3000, max_output_tokens=10)
    assert err.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
    history = [{"role": "user", "content": "word " * 800} for _ in range(3)]
    ok = oai.responses.create(
        model=SMOL,
        input=[*history, {"role": "user", "content": "Hi"}],
        truncation="auto",
        max_output_tokens=4,
    )
    assert ok.status in ("completed", "incomplete")
    assert ok.usage is not None
    assert ok.usage.input_tokens < 2048


def test_input_tokens_counts_the_prompt(oai: OpenAI, chat_server: LiveServer) -> None:
    resp = httpx.post(
        f"{chat_server.base_url}/v1/responses/input_tokens",
        json={"model": SMOL, "input": "Hello there"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "response.input_tokens"
    assert body["input_tokens"] > 2


def test_conversation_gets_the_response_appended(oai: OpenAI) -> None:
    conv = oai.conversations.create(items=[{"role": "user", "content": "My name is Ada."}])
    resp = oai.responses.create(
        model=SMOL, conversation=conv.id, input="What is my name?", max_output_tokens=12
    )
    assert resp.conversation is not None
    assert resp.conversation.id == conv.id
    items = oai.conversations.items.list(conv.id, order="asc").data
    assert [i.type for i in items] == ["message", "message", "message"]
    assert items[-1].id == resp.output[-1].id
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(
            model=SMOL, conversation=conv.id, previous_response_id=resp.id, input="x"
        )
