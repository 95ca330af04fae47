"""``POST /v1/responses`` (JSON or SSE) and ``POST /v1/responses/input_tokens``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from egemma.api.sse import EventStreamResponse
from egemma.errors import UnavailableError
from egemma.lifecycle import Cancel, Generations
from egemma.protocol.responses import ResponsesRequest
from egemma.ratelimit import rate_limit
from egemma.services.generation import ClientLeftError, admit
from egemma.services.responses import Prepared, ResponsesService

router = APIRouter(tags=["responses"])

TERMINAL = {"response.completed", "response.incomplete", "response.failed"}


def responses_service(request: Request) -> ResponsesService:
    state = request.app.state
    service = getattr(state, "responses_service", None)
    if service is None:
        service = ResponsesService(state.engines, state.settings, getattr(state, "store", None))
        state.responses_service = service
    return service


async def acquire_slot(engine: Any, request: Request) -> bool:
    """Wait in the model's FIFO. False when the client left while waiting."""
    if request.app.state.draining:
        raise UnavailableError("The server is shutting down.", retry_after=5, code="draining")
    try:
        await admit(engine, request.is_disconnected)
    except ClientLeftError:
        request.app.state.metrics.client_left("queued")
        return False
    return True


async def watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """For non-streaming calls: stop generating when the client hangs up."""
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(0.25)


def _releaser(
    engine: Any, cancel: threading.Event, generations: Generations | None = None
) -> Callable[[], None]:
    released = False

    def release() -> None:
        nonlocal released
        cancel.set()
        if not released:
            released = True
            engine.queue.release()
            if generations is not None and isinstance(cancel, Cancel):
                generations.discard(cancel)

    return release


def start_generation(
    request: Request, service: ResponsesService, prepared: Prepared
) -> tuple[AsyncIterator[dict[str, Any]], Cancel, Callable[[], None]]:
    """The metered event stream of an admitted request, its stop flag (registered so a drain can
    end it with ``response.failed``) and the release that frees the slot."""
    state = request.app.state
    cancel = Cancel()
    state.generations.add(cancel)
    release = _releaser(prepared.engine, cancel, state.generations)
    events = state.metrics.observe(prepared.engine.name, service.events(prepared, cancel))
    return events, cancel, release


async def final_response(
    request: Request,
    events: AsyncIterator[dict[str, Any]],
    cancel: Cancel,
    release: Callable[[], None],
) -> dict[str, Any] | None:
    """Run a non-streamed generation to its end: the final response, or None when the client
    left (generation stopped at once, the slot freed)."""
    watcher = asyncio.create_task(watch_disconnect(request, cancel))
    final: dict[str, Any] | None = None
    try:
        async for event in events:
            if event["type"] in TERMINAL:
                final = event["response"]
    finally:
        release()
        watcher.cancel()
    return final


@router.post("/v1/responses", dependencies=[Depends(rate_limit("chat"))])
async def create_response(
    body: ResponsesRequest,
    request: Request,
    service: ResponsesService = Depends(responses_service),
) -> Response:
    prepared = await service.prepare(body)
    engine = prepared.engine
    if not await acquire_slot(engine, request):
        return Response(status_code=499)
    events, cancel, release = start_generation(request, service, prepared)
    if body.stream:
        return EventStreamResponse(events, on_close=release)
    final = await final_response(request, events, cancel, release)
    if final is None:
        return Response(status_code=499)  # the client left; nobody reads this
    return JSONResponse(final)


@router.post("/v1/responses/input_tokens")
async def count_input_tokens(
    body: ResponsesRequest, service: ResponsesService = Depends(responses_service)
) -> dict[str, Any]:
    tokens = await service.count_input_tokens(body)
    return {"object": "response.input_tokens", "input_tokens": tokens}
