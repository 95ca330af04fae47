"""Hypercorn's own protocol errors in OpenAI's error shape.

Hypercorn answers what it cannot parse (a malformed request line, headers beyond its 16 KiB
buffer) itself, before the app runs, with an empty 400 or 431. Clients of this server expect
``{"error": {...}}`` for every error, so the HTTP/1.1 protocol's error answer is replaced by one
with that body. Hypercorn keeps deciding when and with which status; only the body changes.
"""

from __future__ import annotations

import json
from itertools import chain
from typing import Any

from egemma.errors import error_body

_MESSAGES = {
    400: ("The request is not valid HTTP/1.1.", "invalid_http"),
    431: ("The request's headers are too large.", "headers_too_large"),
}


def _body(status: int) -> bytes:
    message, code = _MESSAGES.get(status, ("The request could not be read.", "invalid_http"))
    return json.dumps(error_body(message, "invalid_request_error", None, code)).encode()


def install() -> None:
    """Patch Hypercorn's HTTP/1.1 protocol once (idempotent; a Hypercorn without the hook is
    left as it is)."""
    import h11
    from hypercorn.protocol.h11 import H11Protocol

    original = getattr(H11Protocol, "_send_error_response", None)
    if original is None or getattr(original, "egemma", False):
        return

    async def send_error_response(self: Any, status_code: int) -> None:
        body = _body(status_code)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await self._send_h11_event(
            h11.Response(
                status_code=status_code,
                headers=list(chain(headers, self.config.response_headers("h11"))),
            )
        )
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())

    send_error_response.egemma = True  # type: ignore[attr-defined]
    H11Protocol._send_error_response = send_error_response  # type: ignore[method-assign]
