"""An error answer sent straight from ASGI middleware, in OpenAI's error shape (middleware runs
outside FastAPI's exception handlers)."""

from __future__ import annotations

import json

from starlette.types import Send

from egemma.errors import error_body


async def send_error(send: Send, status: int, message: str, code: str) -> None:
    """Answer ``status`` and close the connection: the rest of the request is never read."""
    body = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
