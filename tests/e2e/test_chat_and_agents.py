"""Chat completions (older clients) and an OpenAI Agents SDK run against the real server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI, OpenAI

from tests.e2e.conftest import KEY, SMOL
from tests.servers import LiveServer

pytestmark = pytest.mark.slow

CHAT_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
        },
    },
}


def test_chat_completion_plain(oai: OpenAI) -> None:
    resp = oai.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=12
    )
    assert resp.id.startswith("chatcmpl-")
    choice = resp.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert resp.usage is not None
    assert resp.usage.completion_tokens <= 12


def test_chat_completion_stream_with_usage(oai: OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert text
    assert finishes[-1] in ("stop", "length")
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None


def test_chat_completion_forced_tool_call_streamed(oai: OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Weather in Lima?"}],
        tools=[CHAT_TOOL],
        tool_choice="required",
        max_tokens=80,
        stream=True,
    )
    name, args, finish = "", "", None
    for chunk in stream:
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            name += call.function.name or "" if call.function else ""
            args += (call.function.arguments or "") if call.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather"
    assert finish == "tool_calls"
    jsonschema.validate(json.loads(args), CHAT_TOOL["function"]["parameters"])


def test_chat_completion_json_schema(oai: OpenAI) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    resp = oai.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Is water wet? JSON."}],
        max_tokens=40,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "verdict", "schema": schema, "strict": True},
        },
    )
    jsonschema.validate(json.loads(resp.choices[0].message.content or ""), schema)


calls: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """Current weather for a city.

    Args:
        city: The city name.
    """
    calls.append(city)
    return f"Sunny in {city}"


@pytest.fixture
async def weather_agent(chat_server: LiveServer) -> AsyncIterator[Agent[Any]]:
    """An agent on the local model that must call ``get_weather`` and stops on its result."""
    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=f"{chat_server.base_url}/v1", api_key=KEY, max_retries=0)
    calls.clear()
    yield Agent(
        name="weather",
        instructions="Use the tool to answer.",
        model=OpenAIResponsesModel(model=SMOL, openai_client=client),
        tools=[get_weather],
        model_settings=ModelSettings(tool_choice="required", max_tokens=80),
        tool_use_behavior="stop_on_first_tool",
    )
    await client.close()  # inside the test's event loop, not at garbage collection


@pytest.mark.anyio
async def test_agents_sdk_runs_a_required_function_tool(weather_agent: Agent[Any]) -> None:
    result = await Runner.run(
        weather_agent, "What is the weather in Paris?", run_config=RunConfig(tracing_disabled=True)
    )
    assert len(calls) == 1
    assert result.final_output == f"Sunny in {calls[0]}"


@pytest.mark.anyio
async def test_agents_sdk_streamed_run(weather_agent: Agent[Any]) -> None:
    result = Runner.run_streamed(
        weather_agent, "Weather in Quito?", run_config=RunConfig(tracing_disabled=True)
    )
    kinds = [event.type async for event in result.stream_events()]
    assert "raw_response_event" in kinds
    assert len(calls) == 1
    assert result.final_output == f"Sunny in {calls[0]}"
