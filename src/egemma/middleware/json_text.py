"""Refuse JSON bodies that hold a lone UTF-16 surrogate (``"\\ud800"``), before any route.

JSON may escape surrogates that pair with nothing; Python decodes them into a ``str`` that
cannot be encoded, so they fail far away (SQLite, the tokenizer, the log) as a 500 or a false
"store broken" alarm. Every string the app receives must be valid Unicode: the body is
buffered (it is already capped and timed by ``BodyLimitMiddleware``), and only a body that
contains a surrogate escape at all is parsed here, off the event loop, to find out whether one
is unpaired. The body is then replayed to the app unchanged.
"""

from __future__ import annotations

import json
import re

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from egemma.middleware.reply import send_error

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_CODES = {408: "request_timeout", 413: "payload_too_large"}


def has_lone_surrogate(body: bytes) -> bool:
    """True if the JSON ``body`` decodes to a string holding an unpaired surrogate. Bodies that
    are not JSON are left to the app's own parser (its 400)."""
    if not _SURROGATE_ESCAPE.search(body):
        return False
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return False
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except (ValueError, RecursionError):
        return False
    return False


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return b"json" in value.lower()
    return scope.get("method") in ("POST", "PUT", "PATCH")  # FastAPI parses these as JSON


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class JsonTextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        try:
            body = await _read_body(receive)
        except HTTPException as exc:
            await send_error(
                send, exc.status_code, exc.detail, _CODES.get(exc.status_code, "invalid_request")
            )
            return
        if await anyio.to_thread.run_sync(has_lone_surrogate, body):
            await send_error(
                send,
                400,
                "The request body holds a lone UTF-16 surrogate escape (such as \\ud800): "
                "strings must be valid Unicode.",
                "invalid_unicode",
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
