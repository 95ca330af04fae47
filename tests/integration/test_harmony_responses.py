"""The Harmony (gpt-oss) path through the real Responses service: prompt rendered with
openai-harmony, a recorded completion's tokens parsed into reasoning, calls and messages."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from openai.types.responses import Response

from egemma.app import create_app
from egemma.engines.base import (
    CapabilityStatus,
    GeneratedToken,
    GenerationRequest,
    GenerationStats,
    SpecialTokens,
    TokenStream,
)
from egemma.engines.threaded import ThreadedTokenStream
from egemma.runtime import CAPABILITIES, Engines
from egemma.services.prompting import harmony
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.fakes.chat import QueuedEngine

pytestmark = pytest.mark.anyio

CALL = (
    "<|channel|>analysis<|message|>The user wants the weather; call the tool.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    '<|message|>{"city": "Oslo"}<|call|>'
)
FINAL = (
    "<|channel|>analysis<|message|>Report it.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>It is sunny in Oslo.<|return|>"
)
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


class RecordedHarmonyEngine(QueuedEngine):
    """A gpt-oss stand-in: replays a recorded completion, token by token, in Harmony tokens."""

    architecture = "gpt-oss"
    chat_template = None
    n_ctx = 8192
    identity = "/fake/gpt-oss.gguf"
    special = SpecialTokens()

    def __init__(self, encoding: Any) -> None:
        super().__init__(4, 10.0)
        self.name = "gpt-oss-20b"
        self.encoding = encoding
        self.script = CALL
        self.prompts: list[list[int]] = []

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return list(self.encoding.encode(text, allowed_special="all" if special else ()))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return str(self.encoding.decode(list(tokens)))

    def token_id(self, text: str) -> int | None:
        ids = self.tokenize(text)
        return ids[0] if len(ids) == 1 else None

    def check_grammar(self, json_schema: str) -> None:
        """Replays a recording: any schema that is JSON is fine."""
        json.loads(json_schema)

    def generate(self, request: GenerationRequest) -> TokenStream:
        return ThreadedTokenStream(self._generate, request)

    def _generate(
        self, request: GenerationRequest, stats: GenerationStats
    ) -> Iterator[GeneratedToken]:
        prompt, params, cancel = request.prompt, request.params, request.cancel
        self.prompts.append(list(prompt))
        stats.prompt_tokens = len(prompt)
        stats.finish_reason = "stop"
        for token in self.encoding.encode(self.script, allowed_special="all"):
            if cancel.is_set():
                stats.finish_reason = "cancelled"
                return
            yield GeneratedToken(token, self.encoding.decode([token]))
            if token in params.stop_token_ids:
                return
            stats.completion_tokens += 1

    def close(self) -> None:
        pass


@pytest.fixture
async def setup(tmp_path: Any) -> AsyncIterator[tuple[httpx.AsyncClient, RecordedHarmonyEngine]]:
    data = tmp_path / "data"
    settings = make_settings(WORKBENCH_API_KEY=TEST_KEY, DATA_DIR=str(data))
    engine = RecordedHarmonyEngine(harmony.load_encoding(harmony.ensure_harmony_vocab(data)))
    engines = Engines(chat={engine.name: engine}, chat_default=engine.name)
    for key in CAPABILITIES:
        engines.status[key] = CapabilityStatus(name=key, status="loaded")
    app = create_app(settings, engines=engines)
    async with LifespanManager(app) as mgr:
        transport = httpx.ASGITransport(app=mgr.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as c:
            yield c, engine


async def test_reasoning_and_call_then_final_answer(
    setup: tuple[httpx.AsyncClient, RecordedHarmonyEngine],
) -> None:
    client, engine = setup
    first = await client.post(
        "/v1/responses",
        json={
            "input": "Weather in Oslo?",
            "tools": TOOLS,
            "reasoning": {"effort": "low"},
            "instructions": "Be brief.",
        },
    )
    assert first.status_code == 200, first.text
    body = Response.model_validate(first.json())
    assert [o.type for o in body.output] == ["reasoning", "function_call"]
    assert body.output[0].content[0].text.startswith("The user wants")  # type: ignore[union-attr,index]
    call = body.output[1]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Oslo"}
    assert body.usage is not None
    assert body.usage.output_tokens_details.reasoning_tokens > 0
    prompt = engine.encoding.decode(engine.prompts[-1])
    assert "Reasoning: low" in prompt
    assert "Be brief." in prompt
    assert "get_weather" in prompt

    engine.script = FINAL
    second = await client.post(
        "/v1/responses",
        json={
            "previous_response_id": body.id,
            "tools": TOOLS,
            "stream": True,
            "reasoning": {"summary": "auto"},
            "input": [
                {
                    "type": "function_call_output",
                    "call_id": call.call_id,  # type: ignore[union-attr]
                    "output": "sunny",
                }
            ],
        },
    )
    events = [
        json.loads(line[6:]) for line in second.text.splitlines() if line.startswith("data: ")
    ]
    kinds = [e["type"] for e in events]
    assert "response.reasoning_summary_text.delta" in kinds
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    assert [o["type"] for o in final["output"]] == ["reasoning", "message"]
    assert final["output"][1]["content"][0]["text"] == "It is sunny in Oslo."
    replay = engine.encoding.decode(engine.prompts[-1])
    assert "functions.get_weather" in replay
    assert "sunny" in replay
    assert "Be brief." not in replay  # instructions are not carried over


PATCH = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch\n"
APPLY_PATCH = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files.",
    "format": {
        "type": "grammar",
        "syntax": "lark",
        "definition": 'start: "*** Begin Patch\\n" hunk+ "*** End Patch\\n"\n'
        'hunk: "*** Add File: " /.+/ "\\n" ("+" /.*/ "\\n")+\n',
    },
}


async def test_encrypted_reasoning_keeps_a_stateless_chain(
    setup: tuple[httpx.AsyncClient, RecordedHarmonyEngine],
) -> None:
    """Codex's turn: store false, include encrypted_content, the whole history resent with
    reasoning items that carry only summary + encrypted_content (issue 13)."""
    client, engine = setup
    request = {
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "tools": TOOLS,
        "reasoning": {"summary": "auto"},
    }
    user = {
        "type": "message",
        "id": "msg_client_1",
        "role": "user",
        "content": [{"type": "input_text", "text": "Weather in Oslo?"}],
    }
    first = await client.post("/v1/responses", json={**request, "input": [user]})
    assert first.status_code == 200, first.text
    reasoning, call = first.json()["output"]
    sealed = reasoning["encrypted_content"]
    assert isinstance(sealed, str)
    assert sealed.startswith("egr1.")
    assert (await client.get(f"/v1/responses/{first.json()['id']}")).status_code == 404

    # Replayed as Codex does: the raw reasoning_text content is not sent back.
    replayed = {
        "type": "reasoning",
        "id": reasoning["id"],
        "summary": reasoning["summary"],
        "encrypted_content": sealed,
    }
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
    engine.script = FINAL
    history = [user, replayed, call, output]
    second = await client.post("/v1/responses", json={**request, "input": history})
    assert second.status_code == 200, second.text
    prompt = engine.encoding.decode(engine.prompts[-1])
    assert "<|channel|>analysis<|message|>The user wants the weather; call the tool." in prompt

    tampered = {
        **replayed,
        "encrypted_content": sealed[:-2] + ("AA" if sealed[-2:] != "AA" else "BB"),
    }
    bad = await client.post(
        "/v1/responses", json={**request, "input": [user, tampered, call, output]}
    )
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert (error["code"], error["param"]) == (
        "invalid_encrypted_content",
        "input[1].encrypted_content",
    )


async def test_harmony_custom_tool_calls(
    setup: tuple[httpx.AsyncClient, RecordedHarmonyEngine],
) -> None:
    client, engine = setup
    engine.script = f"<|channel|>commentary to=functions.apply_patch<|message|>{PATCH}<|call|>"
    auto = await client.post("/v1/responses", json={"input": "add a.txt", "tools": [APPLY_PATCH]})
    assert auto.status_code == 200, auto.text
    call = auto.json()["output"][-1]
    assert (call["type"], call["name"], call["input"]) == ("custom_tool_call", "apply_patch", PATCH)
    prompt = engine.encoding.decode(engine.prompts[-1])
    assert "Free-form tool" in prompt

    # Forced: the server opens the call itself; the model writes only the input.
    engine.script = f"{PATCH}<|call|>"
    forced = await client.post(
        "/v1/responses",
        json={
            "input": "add a.txt",
            "tools": [APPLY_PATCH],
            "tool_choice": {"type": "custom", "name": "apply_patch"},
        },
    )
    assert forced.status_code == 200, forced.text
    assert forced.json()["output"][-1]["input"] == PATCH
    prompt = engine.encoding.decode(engine.prompts[-1])
    assert prompt.endswith("<|channel|>commentary to=functions.apply_patch<|message|>")

    # Replayed as input, the call renders as a free-form commentary message.
    engine.script = FINAL
    history = [
        {"role": "user", "content": "add a.txt"},
        {"type": "custom_tool_call", "call_id": "call_9", "name": "apply_patch", "input": PATCH},
        {"type": "custom_tool_call_output", "call_id": "call_9", "output": "Done."},
    ]
    third = await client.post("/v1/responses", json={"input": history, "tools": [APPLY_PATCH]})
    assert third.status_code == 200, third.text
    prompt = engine.encoding.decode(engine.prompts[-1])
    assert f"to=functions.apply_patch<|channel|>commentary<|message|>{PATCH}<|call|>" in prompt
    assert (
        "<|start|>functions.apply_patch to=assistant<|channel|>commentary<|message|>Done." in prompt
    )


async def test_forced_function_call_opens_in_the_prefilled_header(
    setup: tuple[httpx.AsyncClient, RecordedHarmonyEngine],
) -> None:
    """The prefilled header opened the call, but its delta was dropped (and the arguments with
    it): a forced call came back as an empty output."""
    client, engine = setup
    engine.script = '{"city": "Oslo"}<|call|>'
    answer = await client.post(
        "/v1/responses", json={"input": "Weather?", "tools": TOOLS, "tool_choice": "required"}
    )
    assert answer.status_code == 200, answer.text
    call = answer.json()["output"][-1]
    assert (call["type"], call["name"]) == ("function_call", "get_weather")
    assert json.loads(call["arguments"]) == {"city": "Oslo"}
