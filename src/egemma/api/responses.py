"""``POST /v1/responses`` (JSON or SSE) and ``POST /v1/responses/input_tokens``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from egemma.api.deps import OwnerDep, ResponsesDep, StateDep, require_store, services
from egemma.api.sse import EventStreamResponse, replay_stream
from egemma.errors import InvalidRequestError
from egemma.protocol.responses import CompactRequest, ResponsesRequest
from egemma.ratelimit import rate_limit
from egemma.services.responses.compaction import compact

router = APIRouter(tags=["responses"])


@router.post("/v1/responses", dependencies=[Depends(rate_limit("chat"))])
async def create_response(
    body: ResponsesRequest,
    request: Request,
    service: ResponsesDep,
    owner: OwnerDep,
    state: StateDep,
) -> Response:
    if body.store is not False or body.conversation is not None:
        await require_store(request)  # its answer is written after generation: check first
    if body.background and body.store is False:
        raise InvalidRequestError(
            "Background mode requires store: true (its state lives in the store).",
            param="background",
        )
    prepared = await service.prepare(body, owner)
    headers = ignored_tools_header(prepared.ignored_tools)
    if body.background:
        background = services(request).background
        assert background is not None  # built with the other services
        queued = await background.launch(prepared)
        if body.stream:
            return replay_stream(state, queued["id"], -1, headers)
        return JSONResponse(queued, headers=headers)
    run = await service.start(prepared, request.is_disconnected, stream=bool(body.stream))
    if body.stream:
        server = state.settings.server
        return EventStreamResponse(
            run.events,
            on_close=run.close,
            write_timeout=server.stream_write_timeout,
            headers=headers,
            keepalive=server.stream_keepalive_interval,
        )
    return JSONResponse(await run.final(request.is_disconnected), headers=headers)


def ignored_tools_header(ignored: tuple[str, ...]) -> dict[str, str]:
    """``X-Ignored-Tools``: the request's tools the server cannot run and did not offer to the
    model (hosted tools such as ``web_search``), so a client can tell."""
    return {"X-Ignored-Tools": ", ".join(ignored)} if ignored else {}


@router.post("/v1/responses/compact", dependencies=[Depends(rate_limit("chat"))])
async def compact_response(
    body: CompactRequest, request: Request, service: ResponsesDep, owner: OwnerDep
) -> dict[str, Any]:
    """Compact ``input`` (or the stored chain of ``previous_response_id``) into the user
    messages and one sealed ``compaction`` item (services/responses/compaction.py)."""
    if body.previous_response_id:
        await require_store(request)
    return await compact(service, body.as_responses_request(), owner, request.is_disconnected)


@router.post("/v1/responses/input_tokens", dependencies=[Depends(rate_limit("chat"))])
async def count_input_tokens(
    body: ResponsesRequest, service: ResponsesDep, owner: OwnerDep
) -> dict[str, Any]:
    tokens = await service.count_input_tokens(body, owner)
    return {"object": "response.input_tokens", "input_tokens": tokens}
