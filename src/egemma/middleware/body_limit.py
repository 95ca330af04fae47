"""Cap request bodies: by ``Content-Length`` up front and by counting a chunked body as it
arrives.

Hypercorn has no ASGI body limit of its own (``wsgi_max_body_size`` is WSGI-only), so the app
caps it.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from egemma.errors import error_body


async def _reject(send: Send, limit: int) -> None:
    body = json.dumps(
        error_body(
            f"Request body exceeds the limit of {limit} bytes.",
            "invalid_request_error",
            None,
            "payload_too_large",
        )
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    await _reject(send, self.max_bytes)
                    return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # HTTPException passes FastAPI's body parsing untouched (any other becomes 400).
                    # The rest of the body is never read: the connection cannot be reused.
                    raise HTTPException(
                        413,
                        f"Request body exceeds the limit of {self.max_bytes} bytes.",
                        headers={"Connection": "close"},
                    )
            return message

        await self.app(scope, counting_receive, send)
