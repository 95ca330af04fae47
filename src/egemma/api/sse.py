"""The one SSE writer, for both wire shapes.

- Responses: ``event: {type}\\ndata: {one json.dumps}\\n\\n`` with ``sequence_number`` from 0
  (a background response replayed from the store keeps the numbers it was stored under).
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
from typing import TYPE_CHECKING, Any, Literal

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from egemma.services.responses.background import follow

if TYPE_CHECKING:
    from egemma.state import AppState

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 10.0
WRITE_TIMEOUT_SECONDS = 30.0
KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
Framing = Literal["responses", "chat", "stored"]
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


# One encoder for every frame: ``json.dumps`` with options builds a new one per call.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_event(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {_JSON.encode(event)}\n\n".encode()


def encode_data(payload: dict[str, Any]) -> bytes:
    return f"data: {_JSON.encode(payload)}\n\n".encode()


class SseFramer:
    """The bytes of one stream's events: Responses frames stamped with ``sequence_number`` from 0,
    chat chunks as bare ``data:`` lines, stored events (a background response replayed) with the
    number they were stored under; ``beat`` is what a silent stretch sends."""

    def __init__(self, framing: Framing, first: int = 0) -> None:
        self.framing = framing
        self.sequence = first  # the next event's number
        self.waiting: dict[str, Any] | None = None  # the response while no output has started

    def frame(self, event: dict[str, Any]) -> bytes:
        if self.framing == "chat":
            return encode_data(event)
        if self.framing == "stored":
            self.sequence = int(event["sequence_number"]) + 1
            return encode_event(event)
        self.waiting = _waiting_response(event, self.waiting)
        return self._stamped(event)

    def beat(self) -> bytes:
        """A keep-alive comment; before the first output item, a repeated ``in_progress`` too."""
        if self.waiting is None or self.framing != "responses":
            return KEEPALIVE
        return KEEPALIVE + self._stamped({"type": "response.in_progress", "response": self.waiting})

    def failure(self) -> bytes:
        """The final frame of a stream whose events failed (never a cut stream)."""
        error = {"code": "server_error", "message": "Internal server error", "param": None}
        if self.framing == "chat":
            return encode_data({"error": {**error, "type": "server_error"}})
        return self._stamped({"type": "error", **error})

    def end(self) -> bytes:
        return DONE if self.framing == "chat" else b""

    def _stamped(self, event: dict[str, Any]) -> bytes:
        data = encode_event({"type": event["type"], "sequence_number": self.sequence, **event})
        self.sequence += 1
        return data


def _waiting_response(event: dict[str, Any], current: dict[str, Any] | None) -> Any:
    if event["type"] in ("response.created", "response.in_progress") and "response" in event:
        return event["response"]
    return None if event["type"] != "response.queued" else current


class EventStreamResponse(Response):
    """SSE response that always cleans up in its own ``finally`` (reliability.md §1).

    Three tasks per stream: the writer (each event framed and sent as it comes, nothing else
    on its path), a guard (keep-alives after ``keepalive`` seconds of silence, and the write
    deadline) and a listener for the client's disconnect. A client that keeps its socket open
    but stops reading blocks our writes once the socket buffers fill: ``write_timeout`` seconds
    into a write that has not returned, the stream ends and ``on_close`` stops its generation,
    so the model slot goes to the next caller. No timer or task is made per event: a token
    costs the event loop one send."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[dict[str, Any]],
        on_close: Callable[[], None],
        framing: Framing = "responses",
        write_timeout: float = WRITE_TIMEOUT_SECONDS,
        headers: dict[str, str] | None = None,
        keepalive: float = KEEPALIVE_SECONDS,
        first_sequence: int = 0,
    ) -> None:
        self._events = events
        self._on_close = on_close
        self._framer = SseFramer(framing, first_sequence)
        self._write_timeout = write_timeout
        self._keepalive = keepalive
        self._lock = asyncio.Lock()  # the writer's and the guard's sends never interleave
        self._last_write = 0.0
        self._writing_since: float | None = None
        self.status_code = 200
        self.background = None
        self.init_headers({**HEADERS, **(headers or {})})  # no body: no Content-Length

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._last_write = asyncio.get_running_loop().time()
        writer = asyncio.ensure_future(self._write(send))
        guard = asyncio.ensure_future(self._guard(send))
        listener = asyncio.ensure_future(self._listen(receive))
        tasks = (writer, guard, listener)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if guard in done and guard.exception() is None:
                log.warning(
                    "client read nothing for %gs: stream closed, generation stopped",
                    self._write_timeout,
                )
            for task in done:
                task.result()  # a failed send, or a failure of the framing itself
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.shield(self._settle(tasks))

    async def _write(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await self._send(send, {**start, "headers": self.raw_headers})
        framer, events = self._framer, self._events
        tail = framer.end()
        while True:
            try:
                event = await anext(events)
            except StopAsyncIteration:
                break
            except Exception:
                log.exception("event stream failed")
                tail = framer.failure() + (tail if framer.framing == "chat" else b"")
                break
            await self._body(send, framer.frame(event))
        if tail:
            await self._body(send, tail)
        await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})

    async def _guard(self, send: Send) -> None:
        """Keep-alives while the stream is silent; returns when a write has hung for
        ``write_timeout`` seconds."""
        loop = asyncio.get_running_loop()
        while True:
            now, since = loop.time(), self._writing_since
            if since is not None:
                if now - since >= self._write_timeout:
                    return
                wait = since + self._write_timeout - now
            elif now - self._last_write >= self._keepalive:
                try:
                    async with asyncio.timeout(self._write_timeout):
                        await self._body(send, self._framer.beat())
                except TimeoutError:
                    return
                continue
            else:
                wait = min(self._last_write + self._keepalive - now, self._write_timeout / 4)
            await asyncio.sleep(wait)

    @staticmethod
    async def _listen(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _body(self, send: Send, data: bytes) -> None:
        await self._send(send, {"type": "http.response.body", "body": data, "more_body": True})

    async def _send(self, send: Send, message: Message) -> None:
        async with self._lock:
            loop = asyncio.get_running_loop()
            self._writing_since = loop.time()
            try:
                await send(message)
            finally:
                self._writing_since = None
            self._last_write = loop.time()

    async def _settle(self, tasks: tuple[asyncio.Future[None], ...]) -> None:
        try:
            await asyncio.wait(tasks)
        finally:
            for task in tasks:
                if not task.cancelled():
                    task.exception()  # retrieved: the outcome was handled in __call__
            self._on_close()
            await self._close_iterators()

    async def _close_iterators(self) -> None:
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:  # closing must never mask the response's own outcome
                log.debug("closing the event stream raised", exc_info=True)


def replay_stream(
    state: AppState, response_id: str, after: int, headers: dict[str, str] | None = None
) -> EventStreamResponse:
    """A background response's stored events after ``after`` (their own ``sequence_number``),
    then the live ones until it ends, with keep-alive comments while waiting and the stream
    settings' write deadline. Leaving stops only the replay: the run goes on in the background."""
    server = state.settings.server
    return EventStreamResponse(
        follow(state.store, response_id, after),
        on_close=lambda: None,
        framing="stored",
        write_timeout=server.stream_write_timeout,
        headers=headers,
        keepalive=server.stream_keepalive_interval,
        first_sequence=after + 1,
    )
