"""``POST /v1/chat/completions`` for older clients, on the Responses engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from egemma.api.responses import (
    TERMINAL,
    acquire_slot,
    final_response,
    responses_service,
    start_generation,
)
from egemma.api.sse import EventStreamResponse
from egemma.protocol.responses import ChatCompletionRequest
from egemma.ratelimit import rate_limit
from egemma.services import chat
from egemma.services.responses import ResponsesService

router = APIRouter(tags=["chat"])


async def _chunks(
    events: AsyncIterator[dict[str, Any]], mapper: chat.ChunkMapper, include_usage: bool
) -> AsyncIterator[bytes]:
    async for event in events:
        for payload in mapper.map(event):
            yield chat.data_line(payload)
        if event["type"] == "response.failed":
            error = {
                "error": {
                    "message": "Generation failed.",
                    "type": "server_error",
                    "param": None,
                    "code": "server_error",
                }
            }
            yield chat.data_line(error)
        if event["type"] in TERMINAL and include_usage:
            yield chat.data_line(
                {
                    "id": mapper.id,
                    "object": "chat.completion.chunk",
                    "created": mapper.created,
                    "model": mapper.model,
                    "choices": [],
                    "usage": chat.usage(event["response"]),
                }
            )
    yield chat.done_line()


@router.post("/v1/chat/completions", dependencies=[Depends(rate_limit("chat"))])
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    service: ResponsesService = Depends(responses_service),
) -> Response:
    prepared = await service.prepare(chat.to_responses_request(body))
    engine = prepared.engine
    model = body.model or engine.name
    if not await acquire_slot(engine, request):
        return Response(status_code=499)
    events, cancel, release = start_generation(request, service, prepared)
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        mapper = chat.ChunkMapper(model)
        return EventStreamResponse(
            events, on_close=release, body=_chunks(events, mapper, include_usage)
        )
    final = await final_response(request, events, cancel, release)
    if final is None:
        return Response(status_code=499)
    return JSONResponse(chat.completion(final, model))
