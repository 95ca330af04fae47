"""Request bodies: framing checked, size capped, and a deadline for the whole body.

- ``Content-Length`` together with ``Transfer-Encoding`` is refused (400): the two framings can
  disagree between a proxy and the server (request smuggling, RFC 9112 §6.3).
- Size: by ``Content-Length`` up front and by counting a chunked body as it arrives. Hypercorn
  has no ASGI body limit of its own (``wsgi_max_body_size`` is WSGI-only), so the app caps it.
- Time: the body must arrive within ``REQUEST_BODY_TIMEOUT`` seconds of the first read (408),
  so slow-body clients cannot hold connections and workers open. Reads after the body (waiting
  for a disconnect) are not timed.
"""

from __future__ import annotations

import time

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from egemma.middleware.reply import send_error


def _framing_error(
    headers: list[tuple[bytes, bytes]], max_bytes: int
) -> tuple[int, str, str] | None:
    names = {name for name, _ in headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        return (
            400,
            "A request may not carry both Content-Length and Transfer-Encoding.",
            "invalid_framing",
        )
    for name, value in headers:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = max_bytes + 1
            if declared > max_bytes:
                return (
                    413,
                    f"Request body exceeds the limit of {max_bytes} bytes.",
                    "payload_too_large",
                )
    return None


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = _framing_error(scope.get("headers", []), self.max_bytes)
        if problem is not None:
            await send_error(send, *problem)
            return
        seen = 0
        complete = False
        deadline: float | None = None

        async def guarded_receive() -> Message:
            nonlocal seen, complete, deadline
            if complete:
                return await receive()
            if deadline is None:
                deadline = time.monotonic() + self.timeout
            with anyio.move_on_after(max(deadline - time.monotonic(), 0)) as scope_:
                message = await receive()
            if scope_.cancelled_caught:
                # HTTPException passes FastAPI's body parsing untouched (any other becomes 400).
                raise HTTPException(
                    408,
                    f"The request body did not arrive within {self.timeout:g} seconds.",
                    headers={"Connection": "close"},
                )
            if message["type"] != "http.request":
                return message
            complete = not message.get("more_body", False)
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # The rest of the body is never read: the connection cannot be reused.
                raise HTTPException(
                    413,
                    f"Request body exceeds the limit of {self.max_bytes} bytes.",
                    headers={"Connection": "close"},
                )
            return message

        await self.app(scope, guarded_receive, send)
