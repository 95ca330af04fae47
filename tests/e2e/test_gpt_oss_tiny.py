"""gpt-oss through llama.cpp for real: a tiny random-weight gpt-oss GGUF with the real
o200k_harmony vocabulary (``scripts/build_tiny_gpt_oss.py``, built once and cached) served by the
real server, reached through the official client (issue 14).

Random weights cannot answer anything: every assertion is about structure, which the Harmony
grammar (``services/prompting/harmony_grammar.py``) guarantees whatever the weights."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from egemma.app import create_app
from tests.e2e.conftest import KEY, real_settings
from tests.servers import LiveServer

pytestmark = pytest.mark.slow

BUILDER = Path(__file__).resolve().parents[2] / "scripts" / "build_tiny_gpt_oss.py"
MODEL = "tiny-gpt-oss"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
ADD = {
    "type": "function",
    "name": "add",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
}
TICKET = {
    "type": "custom",
    "name": "ticket",
    "description": "Open a ticket.",
    "format": {"type": "grammar", "syntax": "regex", "definition": r"T-[0-9]{3}"},
}


def build_tiny_gpt_oss() -> Path:
    done = subprocess.run(
        [sys.executable, str(BUILDER)], capture_output=True, text=True, timeout=900, check=False
    )
    sys.stderr.write(done.stderr[-2000:])
    assert done.returncode == 0, done.stderr[-4000:]
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def gpt_oss_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    gguf = build_tiny_gpt_oss()
    settings = real_settings(
        tmp_path_factory.mktemp("gpt-oss-data"),
        CHAT_MODEL_PATH=str(gguf),
        CHAT_MODEL_NAME=MODEL,
        CHAT_EXTRA_MODELS="",
        CHAT_MODEL_ALIASES="",
        CHAT_N_CTX="4096",
    )
    server = LiveServer(create_app(settings))
    server.start(timeout=300)
    yield server
    server.stop()


@pytest.fixture
def client(gpt_oss_server: LiveServer) -> OpenAI:
    return OpenAI(base_url=f"{gpt_oss_server.base_url}/v1", api_key=KEY, max_retries=0, timeout=300)


def _create(client: OpenAI, **body: Any) -> dict[str, Any]:
    body.setdefault("max_output_tokens", 64)
    return client.responses.create(model=MODEL, **body).model_dump()


def test_turn_is_reasoning_then_a_final_message(client: OpenAI) -> None:
    out = _create(client, input="Hello there.", reasoning={"effort": "low"})
    kinds = [item["type"] for item in out["output"]]
    assert kinds[0] == "reasoning", kinds
    reasoning = out["output"][0]
    assert reasoning["content"][0]["type"] == "reasoning_text"
    assert reasoning["content"][0]["text"]
    assert "<|" not in reasoning["content"][0]["text"]
    # The tiny model closes its final message at once (<|return|>): no empty message item.
    assert kinds[1:] in ([], ["message"]), kinds
    assert out["status"] == "completed"


def test_streamed_events_are_in_order(client: OpenAI) -> None:
    events = []
    with client.responses.stream(
        model=MODEL, input="Hi.", reasoning={"effort": "low"}, max_output_tokens=64
    ) as stream:
        events = [event.type for event in stream]
    assert events[:2] == ["response.created", "response.in_progress"]
    assert events[-1] in ("response.completed", "response.incomplete")
    assert "response.reasoning_text.delta" in events
    first_reasoning = events.index("response.reasoning_text.delta")
    assert events.index("response.output_item.added") < first_reasoning
    assert events.index("response.reasoning_text.done") > first_reasoning
    assert events.count("response.output_item.added") == events.count("response.output_item.done")


def test_required_over_several_tools_calls_one_of_them(client: OpenAI) -> None:
    out = _create(
        client,
        input="Weather in Oslo, or add numbers?",
        tools=[WEATHER, ADD],
        tool_choice="required",
    )
    calls = [i for i in out["output"] if i["type"] == "function_call"]
    assert len(calls) == 1, out["output"]
    call = calls[0]
    assert call["name"] in ("get_weather", "add")
    args = json.loads(call["arguments"])
    if call["name"] == "add":
        assert set(args) == {"a", "b"}
        assert all(isinstance(v, int) for v in args.values())
    else:
        assert set(args) == {"city"}
        assert isinstance(args["city"], str)
        assert len(args["city"]) <= 12
    assert out["status"] == "completed"


def test_auto_with_tools_is_a_valid_turn(client: OpenAI) -> None:
    out = _create(client, input="Add 2 and 3.", tools=[ADD], reasoning={"effort": "low"})
    last = out["output"][-1]
    assert out["output"][0]["type"] == "reasoning"
    assert last["type"] in ("reasoning", "message", "function_call")
    assert out["status"] == "completed"
    if last["type"] == "function_call":
        assert last["name"] == "add"
        assert set(json.loads(last["arguments"])) == {"a", "b"}


def test_json_schema_answer_is_valid_in_the_final_channel(client: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    out = _create(
        client,
        input="Answer in JSON.",
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema}},
    )
    message = out["output"][-1]
    assert message["type"] == "message"
    value = json.loads(message["content"][0]["text"])
    assert set(value) == {"ok", "n"}
    assert isinstance(value["ok"], bool)
    assert isinstance(value["n"], int)


def test_custom_tool_with_a_regex_grammar(client: OpenAI) -> None:
    out = _create(client, input="Open a ticket.", tools=[TICKET, ADD], tool_choice="required")
    calls = [i for i in out["output"] if i["type"] in ("custom_tool_call", "function_call")]
    assert len(calls) == 1, out["output"]
    if calls[0]["type"] == "custom_tool_call":
        assert re.fullmatch(r"T-[0-9]{3}", calls[0]["input"]), calls[0]["input"]
    else:
        assert set(json.loads(calls[0]["arguments"])) == {"a", "b"}
    forced = _create(
        client,
        input="Open a ticket.",
        tools=[TICKET],
        tool_choice={"type": "custom", "name": "ticket"},
    )
    call = forced["output"][-1]
    assert call["type"] == "custom_tool_call"
    assert re.fullmatch(r"T-[0-9]{3}", call["input"]), call["input"]


def test_effort_minimal_skips_the_analysis_message(client: OpenAI) -> None:
    out = _create(client, input="Hi.", reasoning={"effort": "minimal"}, max_output_tokens=64)
    assert "reasoning" not in [item["type"] for item in out["output"]], out["output"]
    assert out["status"] == "completed"
    assert out["reasoning"]["effort"] == "minimal"


@pytest.mark.parametrize("level", ["low", "medium", "high"])
def test_effort_levels_reason_and_render_their_prompt(
    client: OpenAI, level: str, tmp_path: Path
) -> None:
    from egemma.services.prompting.harmony import (
        ensure_harmony_vocab,
        load_encoding,
        render_prompt,
    )
    from egemma.services.prompting.types import Turn

    question = "Why is the sky blue?"
    out = _create(client, input=question, reasoning={"effort": level})
    assert out["reasoning"]["effort"] == level
    assert out["status"] == "completed"
    reasoning = out["output"][0]
    assert reasoning["type"] == "reasoning", out["output"]
    assert [c["type"] for c in reasoning["content"]] == ["reasoning_text"]
    assert reasoning["content"][0]["text"]
    assert "<|" not in reasoning["content"][0]["text"]
    # The server's prompt is the renderer's for this level (the unit tests show that prompt
    # carries "Reasoning: <level>" in its system message and differs from the others only there).
    encoding = load_encoding(ensure_harmony_vocab(tmp_path))
    expected = render_prompt(
        [Turn("user", question)], [], instructions=None, effort=level, encoding=encoding
    )
    assert out["usage"]["input_tokens"] == len(expected)


def test_each_effort_changes_the_prompt_exactly_at_its_reasoning_line(
    client: OpenAI, tmp_path: Path
) -> None:
    """The llama.cpp engine reports as cached the prefix a prompt shares with what its context
    holds: after a ``low`` turn, a ``medium``/``high`` prompt for the same question shares
    everything up to the level word of ``Reasoning: <level>`` and nothing after it."""
    from egemma.services.prompting.harmony import (
        ensure_harmony_vocab,
        load_encoding,
        render_prompt,
    )
    from egemma.services.prompting.types import Turn

    encoding = load_encoding(ensure_harmony_vocab(tmp_path))
    question = "Name a colour."

    def local(level: str) -> list[int]:
        turns = [Turn("user", question)]
        return render_prompt(turns, [], instructions=None, effort=level, encoding=encoding)

    def cached(level: str) -> tuple[int, int]:
        usage = _create(client, input=question, reasoning={"effort": level})["usage"]
        return usage["input_tokens_details"]["cached_tokens"], usage["input_tokens"]

    previous = "low"
    cached(previous)
    for level in ("medium", "high"):
        mine, before = local(level), local(previous)
        split = next(i for i, (a, b) in enumerate(zip(mine, before, strict=False)) if a != b)
        assert encoding.decode(mine[:split]).endswith("Reasoning:")
        assert encoding.decode(mine[split : split + 1]).strip() == level
        assert cached(level) == (split, len(mine))
        assert cached(level) == (len(mine) - 1, len(mine))  # same prompt again: all of it
        previous = level
