"""The one SSE writer, for both wire shapes.

- Responses: ``event: {type}\\ndata: {one json.dumps}\\n\\n`` with ``sequence_number`` from 0.
- Chat completions: ``data: {one json.dumps}\\n\\n`` per chunk, then ``data: [DONE]``.

Each ``data:`` line is exactly one ``json.dumps`` payload, which escapes ``\\n`` and ``\\r``: model
text can never forge an event. Event names come from our code, never from user or model text.
During a long prefill or while the model loads, ``: keep-alive`` comments (every
``STREAM_KEEPALIVE_INTERVAL`` seconds of silence) keep proxies from timing the stream out; the
OpenAI SDKs skip comment lines. Once ``response.created`` is out and before the first output
item, each comment is followed by a repeated ``response.in_progress``, because clients with an
idle timer on events (Codex CLI's ignores comments, issue 13) would otherwise give up on a long
prompt or a slow load.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from egemma.services.responses.background import follow

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 10.0
WRITE_TIMEOUT_SECONDS = 30.0
KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
Framing = Literal["responses", "chat"]
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


class ClientStalledError(Exception):
    """A write to the client did not complete within the write deadline."""


def encode_event(event: dict[str, Any]) -> bytes:
    payload = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {payload}\n\n".encode()


def encode_data(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def with_keepalives(
    events: AsyncIterator[dict[str, Any]], keepalive: float
) -> AsyncIterator[dict[str, Any] | None]:
    """``events`` as they come, and None whenever ``keepalive`` seconds pass without one."""
    pending: asyncio.Task[dict[str, Any]] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=keepalive)
            if not done:
                yield None
                continue
            task, pending = pending, None
            try:
                yield task.result()
            except StopAsyncIteration:
                return
    finally:
        if pending is not None and not pending.done():
            pending.cancel()


async def sse_bytes(
    events: AsyncIterator[dict[str, Any]],
    keepalive: float = KEEPALIVE_SECONDS,
    framing: Framing = "responses",
) -> AsyncIterator[bytes]:
    """Frame each event (Responses: stamped with ``sequence_number`` from 0); comments while
    waiting. A failure mid-stream becomes a final error frame, never a cut stream."""
    sequence = 0
    waiting: dict[str, Any] | None = None  # the response while no output has started
    try:
        async for event in with_keepalives(events, keepalive):
            if event is None and waiting is not None and framing == "responses":
                yield KEEPALIVE
                beat = {"type": "response.in_progress", "response": waiting}
                yield encode_event({"type": beat["type"], "sequence_number": sequence, **beat})
                sequence += 1
            elif event is None:
                yield KEEPALIVE
            elif framing == "chat":
                yield encode_data(event)
            else:
                waiting = _waiting_response(event, waiting)
                yield encode_event({"type": event["type"], "sequence_number": sequence, **event})
                sequence += 1
    except Exception:
        log.exception("event stream failed")
        error = {"code": "server_error", "message": "Internal server error", "param": None}
        if framing == "chat":
            yield encode_data({"error": {**error, "type": "server_error"}})
        else:
            yield encode_event({"type": "error", "sequence_number": sequence, **error})
            return
    if framing == "chat":
        yield DONE


def _waiting_response(event: dict[str, Any], current: dict[str, Any] | None) -> Any:
    if event["type"] in ("response.created", "response.in_progress") and "response" in event:
        return event["response"]
    return None if event["type"] != "response.queued" else current


class EventStreamResponse(StreamingResponse):
    """SSE response that always cleans up in its own ``finally`` — not the generator's, which
    never runs when Starlette abandons it on disconnect (reliability.md §1).

    Every write has a deadline: a client that keeps its socket open but stops reading blocks
    our writes once the socket buffers fill; after ``write_timeout`` seconds the stream ends and
    ``on_close`` stops its generation, so the model slot goes to the next caller."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[dict[str, Any]],
        on_close: Callable[[], None],
        framing: Framing = "responses",
        write_timeout: float = WRITE_TIMEOUT_SECONDS,
        headers: dict[str, str] | None = None,
        keepalive: float = KEEPALIVE_SECONDS,
    ) -> None:
        self._events = events
        self._on_close = on_close
        self._write_timeout = write_timeout
        self._stalled = False
        super().__init__(
            sse_bytes(events, keepalive, framing=framing), headers={**HEADERS, **(headers or {})}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def timed_send(message: Message) -> None:
            with anyio.move_on_after(self._write_timeout) as deadline:
                await send(message)
            if deadline.cancelled_caught:
                self._stalled = True
                raise ClientStalledError

        try:
            await super().__call__(scope, receive, timed_send)
        except Exception:
            if not self._stalled:
                raise
            log.warning(
                "client read nothing for %gs: stream closed, generation stopped",
                self._write_timeout,
            )
        finally:
            self._on_close()
            await asyncio.shield(self._close_iterators())

    async def _close_iterators(self) -> None:
        for iterator in (self.body_iterator, self._events):
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # closing must never mask the response's own outcome
                    log.debug("closing the event stream raised", exc_info=True)


def replay_stream(
    store: Any, response_id: str, after: int, headers: dict[str, str] | None = None
) -> StreamingResponse:
    """A background response's stored events after ``after`` (their own ``sequence_number``),
    then the live ones until it ends, with keep-alive comments while waiting."""

    async def body() -> AsyncIterator[bytes]:
        async for event in with_keepalives(follow(store, response_id, after), KEEPALIVE_SECONDS):
            yield KEEPALIVE if event is None else encode_event(event)

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={**HEADERS, **(headers or {})}
    )
