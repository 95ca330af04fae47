"""``POST /v1/chat/completions`` for older clients, on the Responses engine."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from egemma.api.deps import ChatDep, OwnerDep, StateDep
from egemma.api.responses import ignored_tools_header
from egemma.api.sse import EventStreamResponse
from egemma.protocol.responses import ChatCompletionRequest
from egemma.ratelimit import rate_limit

router = APIRouter(tags=["chat"])


@router.post("/v1/chat/completions", dependencies=[Depends(rate_limit("chat"))])
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    service: ChatDep,
    owner: OwnerDep,
    state: StateDep,
) -> Response:
    prepared = await service.prepare(body, owner)
    headers = ignored_tools_header(prepared.prepared.ignored_tools)
    run = await service.start(prepared, request.is_disconnected, stream=bool(body.stream))
    if body.stream:
        return EventStreamResponse(
            service.chunks(prepared, run),
            on_close=run.close,
            framing="chat",
            write_timeout=state.settings.server.stream_write_timeout,
            headers=headers,
            keepalive=state.settings.server.stream_keepalive_interval,
        )
    return JSONResponse(
        await service.complete(prepared, run, request.is_disconnected), headers=headers
    )
