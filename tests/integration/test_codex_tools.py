"""Every tool type a client sends (issue 13): Codex's real request shape, namespace tools,
hosted tools set aside and reported, custom (freeform) tools with grammars, and their items
replayed as input. Through the app with scripted fakes and the official client's types."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from openai import AsyncOpenAI
from openai.types.responses import Response, ResponseCustomToolCall

from egemma.app import create_app
from egemma.runtime import Engines
from egemma.settings import Settings
from tests.conftest import AUTH, TEST_KEY
from tests.fakes.chat import FakeChatEngine, fake_engines

pytestmark = pytest.mark.anyio

CODEX_REQUEST = json.loads(
    (Path(__file__).resolve().parent.parent / "fixtures" / "codex_request.json").read_text()
)
PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+Hello\n*** End Patch\n"
APPLY_PATCH = next(t for t in CODEX_REQUEST["tools"] if t.get("name") == "apply_patch")


def _call(name: str, **body: Any) -> str:
    return "<tool_call>" + json.dumps({"name": name, **body}) + "</tool_call>"


ENGINES = {
    "wait": _call("multi_agent_v1.wait_agent", arguments={"targets": ["a1"]}),
    "patch": _call("apply_patch", input=PATCH),
    "badpatch": _call("apply_patch", input="not a patch"),
    "raw": PATCH,
    "badargs": _call("get_weather", arguments={"town": "Oslo"}),
    "text": "Done.",
}


@pytest.fixture
def engines() -> Engines:
    return fake_engines(
        *(FakeChatEngine(name, script=script, n_ctx=200_000) for name, script in ENGINES.items())
    )


@pytest.fixture
async def app_client(
    settings: Settings, engines: Engines
) -> AsyncIterator[tuple[httpx.AsyncClient, AsyncOpenAI]]:
    app = create_app(settings, engines=engines)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            sdk = AsyncOpenAI(base_url="http://test/v1", api_key=TEST_KEY, http_client=http)
            yield http, sdk


def _events(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


async def test_codex_request_is_served_and_hosted_tools_reported(
    app_client: tuple[httpx.AsyncClient, AsyncOpenAI],
) -> None:
    http, _ = app_client
    body = {**CODEX_REQUEST, "model": "wait"}
    answer = await http.post("/v1/responses", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-ignored-tools"] == "web_search"
    events = _events(answer.text)
    assert events[-1]["type"] == "response.completed", events[-1]["response"]["error"]
    final = Response.model_validate(events[-1]["response"])
    call = final.output[-1]
    assert call.type == "function_call"
    # Codex routes on name + namespace, as the client declared them.
    assert (call.name, call.namespace) == ("wait_agent", "multi_agent_v1")
    assert json.loads(call.arguments) == {"targets": ["a1"]}
    echoed = {t.type for t in final.tools}
    assert "namespace" in echoed
    assert "custom" in echoed
    assert "web_search" not in echoed
    assert final.store is False


async def test_tool_choice_forcing_a_hosted_tool_is_400(
    app_client: tuple[httpx.AsyncClient, AsyncOpenAI],
) -> None:
    http, _ = app_client
    body = {
        "model": "text",
        "input": "hi",
        "tools": [{"type": "web_search"}],
        "tool_choice": {"type": "web_search"},
    }
    answer = await http.post("/v1/responses", json=body, headers=AUTH)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "unsupported_tool_choice"
    assert answer.json()["error"]["param"] == "tool_choice.type"


async def test_only_hosted_tools_answers_in_text(
    app_client: tuple[httpx.AsyncClient, AsyncOpenAI],
) -> None:
    http, _ = app_client
    tools = [
        {"type": "web_search"},
        {"type": "mcp", "server_label": "deepwiki", "server_url": "https://example.invalid/mcp"},
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "code_interpreter"},
        {"type": "image_generation"},
        {"type": "local_shell"},
    ]
    body = {"model": "text", "input": "hi", "tools": tools}
    answer = await http.post("/v1/responses", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-ignored-tools"] == (
        "web_search, mcp:deepwiki, file_search, code_interpreter, image_generation, local_shell"
    )
    assert Response.model_validate(answer.json()).output_text == "Done."


async def test_custom_tool_call_streams_its_input(
    app_client: tuple[httpx.AsyncClient, AsyncOpenAI],
) -> None:
    _, sdk = app_client
    async with sdk.responses.stream(model="patch", input="add hello", tools=[APPLY_PATCH]) as s:
        kinds = [event.type async for event in s]
        final = await s.get_final_response()
    assert "response.custom_tool_call_input.delta" in kinds
    assert "response.custom_tool_call_input.done" in kinds
    call = final.output[-1]
    assert isinstance(call, ResponseCustomToolCall)
    assert (call.name, call.input) == ("apply_patch", PATCH)


async def test_custom_tool_input_off_its_grammar_fails_the_response(
    app_client: tuple[httpx.AsyncClient, AsyncOpenAI],
) -> None:
    _, sdk = app_client
    final = await sdk.responses.create(model="badpatch", input="x", tools=[APPLY_PATCH])
    assert final.status == "failed", final.output
    assert final.error is not None
    assert final.error.code == "invalid_tool_call"
    assert "grammar" in final.error.message


async def test_forced_custom_tool_decodes_under_its_grammar(
    app_client: tuple[httpx.AsyncClient, AsyncOpenAI], engines: Engines
) -> None:
    _, sdk = app_client
    final = await sdk.responses.create(
        model="raw",
        input="add hello",
        tools=[APPLY_PATCH],
        tool_choice={"type": "custom", "name": "apply_patch"},
    )
    call = final.output[-1]
    assert isinstance(call, ResponseCustomToolCall)
    assert call.input == PATCH
    engine = engines.chat["raw"]
    assert isinstance(engine, FakeChatEngine)
    gbnf = engine.requests[-1].params.gbnf
    assert gbnf is not None
    assert gbnf.startswith("root ::= g-start")
    assert '"*** Begin Patch"' in gbnf


async def test_custom_and_namespaced_items_replay_as_input(
    app_client: tuple[httpx.AsyncClient, AsyncOpenAI], engines: Engines
) -> None:
    http, _ = app_client
    history = [
        {
            "type": "message",
            "id": "msg_client_1",
            "role": "user",
            "content": [{"type": "input_text", "text": "add hello"}],
        },
        {"type": "custom_tool_call", "call_id": "call_1", "name": "apply_patch", "input": PATCH},
        {"type": "custom_tool_call_output", "call_id": "call_1", "output": "Success."},
        {
            "type": "function_call",
            "call_id": "call_2",
            "name": "wait_agent",
            "namespace": "multi_agent_v1",
            "arguments": '{"targets": ["a1"]}',
        },
        {"type": "function_call_output", "call_id": "call_2", "output": "finished"},
    ]
    body = {**CODEX_REQUEST, "model": "text", "input": CODEX_REQUEST["input"] + history}
    answer = await http.post("/v1/responses", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    engine = engines.chat["text"]
    assert isinstance(engine, FakeChatEngine)
    prompt = engine.detokenize(engine.prompts[-1])
    assert json.dumps({"name": "apply_patch", "input": PATCH}) in prompt
    assert '<tool_response name="apply_patch">\nSuccess.\n</tool_response>' in prompt
    assert '"name": "multi_agent_v1.wait_agent"' in prompt
    assert '<tool_response name="multi_agent_v1.wait_agent">' in prompt


async def test_a_call_that_ends_the_output_is_validated(
    app_client: tuple[httpx.AsyncClient, AsyncOpenAI],
) -> None:
    """The last call used to be checked while still open, with no arguments yet (so never)."""
    _, sdk = app_client
    weather = {
        "type": "function",
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    final = await sdk.responses.create(model="badargs", input="weather?", tools=[weather])
    assert final.status == "failed"
    assert final.error is not None
    assert final.error.code == "invalid_tool_call"
    assert "'city' is a required property" in final.error.message


# The fields Codex 0.171.0 cannot decode a model without (found by removing each in turn).
CODEX_REQUIRED = {
    "slug",
    "display_name",
    "supported_reasoning_levels",
    "shell_type",
    "visibility",
    "supported_in_api",
    "priority",
    "support_verbosity",
    "truncation_policy",
    "experimental_supported_tools",
}


async def test_models_answers_codex_metadata_beside_the_openai_list(
    app_client: tuple[httpx.AsyncClient, AsyncOpenAI],
) -> None:
    http, sdk = app_client
    plain = (await http.get("/v1/models", headers=AUTH)).json()
    assert "models" not in plain
    answer = await http.get("/v1/models?client_version=0.171.0", headers=AUTH)
    listing = answer.json()
    assert [m["id"] for m in listing["data"]] == list(ENGINES)
    models = {m["slug"]: m for m in listing["models"]}
    assert list(models) == list(ENGINES)
    for info in models.values():
        assert set(info) >= CODEX_REQUIRED
        assert "base_instructions" in info or "model_messages" in info
        assert info["context_window"] == 200_000
        assert info["apply_patch_tool_type"] == "freeform"
        assert info["input_modalities"] == ["text"]
        assert info["supported_reasoning_levels"] == []  # template models do not reason
    assert [m.id async for m in sdk.models.list()] == list(ENGINES)


CHAT_APPLY_PATCH = {
    "type": "custom",
    "custom": {
        "name": "apply_patch",
        "description": APPLY_PATCH["description"],
        "format": {
            "type": "grammar",
            "grammar": {"syntax": "lark", "definition": APPLY_PATCH["format"]["definition"]},
        },
    },
}


async def test_chat_completions_custom_tools(
    app_client: tuple[httpx.AsyncClient, AsyncOpenAI], engines: Engines
) -> None:
    http, sdk = app_client
    choice = {"type": "custom", "custom": {"name": "apply_patch"}}
    messages = [{"role": "user", "content": "add hello"}]
    done = await sdk.chat.completions.create(
        model="raw", messages=messages, tools=[CHAT_APPLY_PATCH], tool_choice=choice
    )
    assert done.choices[0].finish_reason == "tool_calls"
    call = done.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.type == "custom"
    assert (call.custom.name, call.custom.input) == ("apply_patch", PATCH)
    engine = engines.chat["raw"]
    assert isinstance(engine, FakeChatEngine)
    assert engine.requests[-1].params.gbnf is not None

    body = {
        "model": "raw",
        "messages": messages,
        "tools": [CHAT_APPLY_PATCH],
        "tool_choice": choice,
        "stream": True,
    }
    streamed = await http.post("/v1/chat/completions", json=body, headers=AUTH)
    chunks = [
        json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")
    ]
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and c["choices"][0]["delta"].get("tool_calls")
    ]
    assert calls == [
        {
            "index": 0,
            "id": calls[0]["id"],
            "type": "custom",
            "custom": {"name": "apply_patch", "input": PATCH},
        }
    ]

    # The call and its result replayed as chat messages.
    history = [
        *messages,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_7",
                    "type": "custom",
                    "custom": {"name": "apply_patch", "input": PATCH},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_7", "content": "Success."},
    ]
    again = await sdk.chat.completions.create(
        model="text", messages=history, tools=[CHAT_APPLY_PATCH]
    )
    assert again.choices[0].message.content == "Done."
