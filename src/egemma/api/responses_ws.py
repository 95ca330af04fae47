"""WebSocket mode on ``/v1/responses`` (Open Responses specification).

The client sends ``response.create`` frames (the fields of a ``POST /v1/responses`` body, at the
top level or under ``response``); the server answers each with the same events the SSE stream
carries, one JSON text frame per event, ``sequence_number`` from 0 per response. Responses run
one after another on a connection. ``previous_response_id`` may name any earlier response of the
same connection, ``store: false`` ones included (connection-local state, dropped at close).
Anything wrong with a frame is an ``error`` frame (``status``, OpenAI's ``error`` object, and the
``code``/``message``/``param`` of a stream ``error`` event); the connection stays usable.

Auth is the bearer header of the upgrade request (policy close 1008 without it), and each
``response.create`` counts against the ``chat`` rate-limit bucket like a POST.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import Any, cast

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from egemma.api.deps import app_state, principal, require_store, services
from egemma.errors import DrainingError, EgemmaError, InvalidRequestError
from egemma.protocol.responses import ResponsesRequest
from egemma.ratelimit import rate_limit
from egemma.security import require_api_key
from egemma.store.base import Owner

log = logging.getLogger(__name__)
router = APIRouter(tags=["responses"])

LOCAL_RESPONSES = 32  # responses a connection remembers for previous_response_id
_chat_limit = rate_limit("chat")


class _Connection:
    """One WebSocket's state: the item chains of its recent responses."""

    def __init__(self, ws: WebSocket, owner: Owner) -> None:
        self.ws = ws
        self.owner = owner
        self.chains: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    async def send_error(self, exc: EgemmaError) -> None:
        body = exc.body()["error"]
        frame = {"type": "error", "status": exc.status_code, "error": body}
        frame.update({k: body[k] for k in ("code", "message", "param")})
        await self.ws.send_text(json.dumps(frame))

    def parse(self, text: str) -> ResponsesRequest:
        try:
            frame = json.loads(text)
        except ValueError:
            raise InvalidRequestError("The frame is not valid JSON.", code="invalid_json") from None
        if not isinstance(frame, dict):
            raise InvalidRequestError("A frame must be a JSON object.", param="type")
        if frame.get("type") != "response.create":
            raise InvalidRequestError(
                "Unsupported frame type; send 'response.create'.",
                param="type",
                code="unsupported_frame_type",
            )
        nested = frame.get("response")
        fields: dict[str, Any] = nested if isinstance(nested, dict) else frame
        fields = {k: v for k, v in fields.items() if k not in ("type", "stream", "background")}
        try:
            return ResponsesRequest.model_validate(fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise InvalidRequestError(f"{param}: {first['msg']}", param=param) from None

    def local_chain(self, req: ResponsesRequest) -> ResponsesRequest:
        """A ``previous_response_id`` of this connection → its items prepended to ``input``."""
        chain = self.chains.get(req.previous_response_id or "")
        if chain is None:
            return req
        new = req.input if isinstance(req.input, list) else [req.input or ""]
        if isinstance(req.input, str):
            new = [{"role": "user", "content": req.input}]
        return req.model_copy(update={"input": [*chain, *new], "previous_response_id": None})

    async def create(self, req: ResponsesRequest) -> None:
        await _chat_limit(cast(Request, self.ws))
        local = self.local_chain(req)
        if local.store is not False or local.previous_response_id is not None:
            await require_store(cast(Request, self.ws))
        if app_state(cast(Request, self.ws)).draining:
            raise DrainingError()
        service = services(cast(Request, self.ws)).responses
        prepared = await service.prepare(local, self.owner)
        prepared.builder.response["previous_response_id"] = req.previous_response_id
        run = await service.start(prepared)
        try:
            sequence = 0
            async for event in run.events:
                await self.ws.send_text(json.dumps({**event, "sequence_number": sequence}))
                sequence += 1
                if event["type"] in ("response.completed", "response.incomplete"):
                    response = event["response"]
                    self.remember(response["id"], [*prepared.context.items, *response["output"]])
        finally:
            run.close()
            await run.events.aclose()  # type: ignore[attr-defined]

    def remember(self, response_id: str, items: list[dict[str, Any]]) -> None:
        self.chains[response_id] = items
        while len(self.chains) > LOCAL_RESPONSES:
            self.chains.popitem(last=False)


@router.websocket("/v1/responses")
async def responses_socket(ws: WebSocket) -> None:
    try:
        await require_api_key(cast(Request, ws))
    except EgemmaError:
        await ws.close(code=1008, reason="Invalid or missing API key.")
        return
    await ws.accept()
    conn = _Connection(ws, principal(cast(Request, ws)).owner)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                text = message.get("text")
                if text is None:
                    raise InvalidRequestError(
                        "Frames must be text (JSON), not binary.", code="invalid_json"
                    )
                await conn.create(conn.parse(text))
            except EgemmaError as exc:
                await conn.send_error(exc)
    except WebSocketDisconnect:
        return
