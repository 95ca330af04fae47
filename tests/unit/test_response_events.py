"""The event builder and the SSE writer against the openai-python types."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from egemma.api.sse import EventStreamResponse, encode_event
from egemma.engines.base import SamplingParams
from egemma.protocol.responses import ResponsesRequest
from egemma.services.prompting.types import OutputDelta
from egemma.services.responses.events import ResponseBuilder
from egemma.services.responses.events import new_response as _response_object
from egemma.services.responses.events import usage_of as _usage

EVENTS = TypeAdapter(ResponseStreamEvent)


def builder(summary: bool = False) -> ResponseBuilder:
    req = ResponsesRequest.model_validate({"input": "hi", "metadata": {"k": "v"}})
    params = SamplingParams(max_tokens=8, temperature=0.3, top_p=0.9, presence_penalty=0.5)
    base = _response_object(req, "tiny", [], {"k": "v"}, "low", True, None, params)
    return ResponseBuilder(base, summary=summary, tool_names={"get_weather"})


def run(
    b: ResponseBuilder, deltas: list[OutputDelta], status: str = "completed"
) -> list[dict[str, Any]]:
    from egemma.engines.base import GenerationStats

    events = b.start()
    for d in deltas:
        events += b.feed(d)
    stats = GenerationStats(prompt_tokens=5, completion_tokens=len(deltas))
    reason = "max_output_tokens" if status == "incomplete" else None
    events += b.finish(status, _usage(stats, 1), incomplete_reason=reason)
    return [{"sequence_number": i, **e} for i, e in enumerate(events)]


DELTAS = [
    OutputDelta("reasoning", "Think"),
    OutputDelta("reasoning", "ing."),
    OutputDelta("text", "Hel"),
    OutputDelta("text", "lo"),
    OutputDelta("tool_call", name="get_weather"),
    OutputDelta("tool_arguments", '{"city":'),
    OutputDelta("tool_arguments", ' "Oslo"}'),
]


@pytest.mark.parametrize("summary", [False, True])
def test_every_event_validates_against_openai_types(summary: bool) -> None:
    events = run(builder(summary), DELTAS)
    for event in events:
        EVENTS.validate_python(event)
    final = Response.model_validate(events[-1]["response"])
    assert [o.type for o in final.output] == ["reasoning", "message", "function_call"]
    assert final.output_text == "Hello"
    reasoning = final.output[0]
    assert reasoning.content is not None
    assert reasoning.content[0].text == "Thinking."
    assert (reasoning.summary[0].text if summary else reasoning.summary) == (
        "Thinking." if summary else []
    )
    assert final.output[2].arguments == '{"city": "Oslo"}'  # type: ignore[union-attr]


def test_order_per_item() -> None:
    types = [e["type"] for e in run(builder(), DELTAS[2:4])]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]


def test_incomplete_marks_the_open_item() -> None:
    events = run(builder(), DELTAS[2:3], status="incomplete")
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][0]["status"] == "incomplete"


def test_arguments_without_a_call_are_dropped() -> None:
    events = run(builder(), [OutputDelta("tool_arguments", "{}"), OutputDelta("text", "x")])
    assert [o["type"] for o in events[-1]["response"]["output"]] == ["message"]


@pytest.mark.parametrize(
    "text", ["a\nb", "a\r\nb", "x\ry", "\u2028", 'data: {"type":"response.completed"}\n\n']
)
def test_model_text_cannot_forge_an_event(text: str) -> None:
    frame = encode_event({"type": "response.output_text.delta", "delta": text}).decode()
    lines = frame.split("\n")
    assert lines[0] == "event: response.output_text.delta"
    assert lines[1].startswith("data: ")
    assert lines[2:] == ["", ""]
    assert json.loads(lines[1][6:])["delta"] == text


async def sse_chunks(
    events: AsyncIterator[dict[str, Any]],
    keepalive: float,
    framing: Literal["responses", "chat", "stored"] = "responses",
    on_chunk: Callable[[list[bytes]], None] = lambda chunks: None,
) -> list[bytes]:
    """The body chunks ``EventStreamResponse`` sends for ``events``, through its ASGI call."""
    chunks: list[bytes] = []
    closed: list[bool] = []
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()  # the client never leaves
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            chunks.append(message["body"])
            on_chunk(chunks)

    response = EventStreamResponse(
        events, on_close=lambda: closed.append(True), framing=framing, keepalive=keepalive
    )
    await response({"type": "http"}, receive, send)  # type: ignore[arg-type]
    assert closed == [True]
    return chunks


def frames_of(chunks: list[bytes]) -> list[dict[str, Any]]:
    lines = b"".join(chunks).decode().split("\n")
    return [json.loads(ln[6:]) for ln in lines if ln.startswith("data: ") and ln != "data: [DONE]"]


def test_sse_writer_numbers_from_zero_and_keeps_alive() -> None:
    async def slow() -> AsyncIterator[dict[str, Any]]:
        yield {"type": "response.output_item.added"}
        await asyncio.sleep(0.05)
        yield {"type": "response.completed"}

    chunks = asyncio.run(sse_chunks(slow(), keepalive=0.01))
    assert b": keep-alive\n\n" in chunks
    assert [p["sequence_number"] for p in frames_of(chunks)] == [0, 1]


def test_sse_writer_failure_is_a_final_error_frame() -> None:
    async def failing() -> AsyncIterator[dict[str, Any]]:
        yield {"type": "response.created"}
        raise RuntimeError("boom")

    frames = frames_of(asyncio.run(sse_chunks(failing(), keepalive=10)))
    assert [f["type"] for f in frames] == ["response.created", "error"]
    assert frames[1]["sequence_number"] == 1
    assert frames[1]["code"] == "server_error"

    async def failing_chat() -> AsyncIterator[dict[str, Any]]:
        yield {"id": "chatcmpl-1"}
        raise RuntimeError("boom")

    chunks = asyncio.run(sse_chunks(failing_chat(), keepalive=10, framing="chat"))
    assert b"".join(chunks).endswith(b"data: [DONE]\n\n")
    assert frames_of(chunks)[1]["error"]["type"] == "server_error"


def test_sse_writer_replays_stored_events_under_their_own_numbers() -> None:
    """A background response replayed (``stored``): events keep the numbers they were stored
    under, silence gets bare comments, and a failure is numbered after the last event."""

    async def stored() -> AsyncIterator[dict[str, Any]]:
        yield {"type": "response.output_text.delta", "sequence_number": 7, "delta": "a"}
        await asyncio.sleep(0.05)
        yield {"type": "response.output_text.delta", "sequence_number": 8, "delta": "b"}
        raise RuntimeError("the store went away")

    chunks = asyncio.run(sse_chunks(stored(), keepalive=0.01, framing="stored"))
    frames = frames_of(chunks)
    assert [f["sequence_number"] for f in frames] == [7, 8, 9]
    assert frames[-1]["type"] == "error"
    assert b": keep-alive\n\n" in chunks
    assert not any(b"response.in_progress" in c for c in chunks)


def test_sse_writer_repeats_in_progress_until_output_starts() -> None:
    """Codex's idle timer ignores comments: while the prompt is read (or the model loads), each
    keep-alive comment is followed by a repeated ``response.in_progress``; once output has
    started, comments alone."""
    beat_seen, comment_seen = asyncio.Event(), asyncio.Event()
    response = {"id": "resp_1", "status": "in_progress", "output": []}

    async def events() -> AsyncIterator[dict[str, Any]]:
        yield {"type": "response.created", "response": response}
        yield {"type": "response.in_progress", "response": response}
        await beat_seen.wait()
        yield {"type": "response.output_item.added", "output_index": 0, "item": {}}
        await comment_seen.wait()
        yield {"type": "response.completed", "response": response}

    def watch(chunks: list[bytes]) -> None:
        if chunks[-1].startswith(b": keep-alive\n\nevent: response.in_progress"):
            beat_seen.set()
        started = any(b"response.output_item.added" in c for c in chunks)
        if chunks[-1] == b": keep-alive\n\n" and started:
            comment_seen.set()

    chunks = asyncio.run(asyncio.wait_for(sse_chunks(events(), 0.01, on_chunk=watch), 30))
    frames = frames_of(chunks)
    kinds = [f["type"] for f in frames]
    added = kinds.index("response.output_item.added")
    assert kinds[:3] == ["response.created", "response.in_progress", "response.in_progress"]
    assert set(kinds[1:added]) == {"response.in_progress"}
    assert all(f["response"]["id"] == "resp_1" for f in frames[1:added])
    assert kinds[added + 1 :] == ["response.completed"]
    added_chunk = next(i for i, c in enumerate(chunks) if b"response.output_item.added" in c)
    for chunk in chunks[2:added_chunk]:  # every repeated in_progress comes right after a comment
        assert chunk.startswith(b": keep-alive\n\nevent: response.in_progress\n")
    assert b": keep-alive\n\n" in chunks[added_chunk:]
    assert [f["sequence_number"] for f in frames] == list(range(len(frames)))


def test_sse_writer_gives_up_on_a_client_that_stops_reading() -> None:
    """A send that hangs past the write deadline ends the stream and closes the generation."""
    closed: list[bool] = []
    sent: list[dict[str, Any]] = []

    async def events() -> AsyncIterator[dict[str, Any]]:
        while True:
            yield {"type": "response.output_text.delta", "delta": "x"}

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) > 3:
            await asyncio.sleep(3600)  # the socket buffers are full

    async def run() -> float:
        response = EventStreamResponse(
            events(), on_close=lambda: closed.append(True), write_timeout=0.2, keepalive=0.05
        )
        start = time.monotonic()
        await response({"type": "http"}, receive, send)  # type: ignore[arg-type]
        return time.monotonic() - start

    elapsed = asyncio.run(asyncio.wait_for(run(), 30))
    assert closed == [True]
    assert len(sent) == 4  # no keep-alive is squeezed in while a write hangs
    assert 0.2 <= elapsed < 5


# The Open Responses ``ResponseResource`` requires these (openresponses.org specification);
# openai-python's ``Response`` declares them all too, most as optional with a default.
OPEN_RESPONSES_REQUIRED = {
    "id", "object", "created_at", "completed_at", "status", "incomplete_details", "model",
    "previous_response_id", "instructions", "output", "error", "tools", "tool_choice",
    "truncation", "parallel_tool_calls", "text", "top_p", "presence_penalty",
    "frequency_penalty", "top_logprobs", "temperature", "reasoning", "usage",
    "max_output_tokens", "max_tool_calls", "store", "background", "service_tier", "metadata",
    "safety_identifier", "prompt_cache_key",
}  # fmt: skip


@pytest.mark.parametrize("status", ["completed", "incomplete"])
def test_response_object_carries_every_field_present_not_defaulted(status: str) -> None:
    b = builder()
    events = run(b, [OutputDelta("text", "Hi")], status)
    for event in events:
        if "response" not in event:
            continue
        body = event["response"]
        assert body.keys() >= OPEN_RESPONSES_REQUIRED, OPEN_RESPONSES_REQUIRED - body.keys()
        model = Response.model_validate(body)
        # Every field openai's Response declares and we can answer is set by us, not defaulted.
        unanswerable = {
            "access_programs", "image", "input_transformations", "moderation", "prompt",
            "prompt_cache_diagnostics", "prompt_cache_options", "prompt_cache_retention",
            "tool_usage", "conversation",
        }  # fmt: skip
        missing = set(Response.model_fields) - model.model_fields_set - unanswerable
        assert not missing, missing
        assert body["top_logprobs"] == 0
        assert body["presence_penalty"] == 0.5
        assert body["frequency_penalty"] == 0.0
        assert isinstance(body["temperature"], float)
