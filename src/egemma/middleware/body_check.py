"""Refuse bodies whose content would be misread, before any route.

- **Lone surrogates** (``"\\ud800"``): JSON may escape surrogates that pair with nothing; Python
  decodes them into a ``str`` that cannot be encoded, so they fail far away (SQLite, the
  tokenizer, the log) as a 500 or a false "store broken" alarm. Only a body that holds a
  surrogate escape at all is parsed here, off the event loop, to find out whether one is
  unpaired (400 ``invalid_unicode``).
- **Truncated multipart**: a body without its closing ``--boundary--`` was cut short, and the
  parser would silently drop its last part (400 ``truncated_body``).

The body is buffered (it is already capped and timed by ``BodyLimitMiddleware``) and replayed to
the app unchanged.
"""

from __future__ import annotations

import json
import re

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from egemma.middleware.reply import send_error

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_BOUNDARY = re.compile(rb'boundary="?([^";,\s]+)"?', re.IGNORECASE)
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


def multipart_complete(content_type: bytes, body: bytes) -> bool:
    """True if ``body`` holds its closing delimiter (or names no boundary: the parser's 400)."""
    match = _BOUNDARY.search(content_type)
    return match is None or b"--" + match.group(1) + b"--" in body


def _content_type(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return bytes(value)
    return None


def _kind(scope: Scope) -> str | None:
    """``json``, ``multipart`` or None (not checked)."""
    if scope["type"] != "http":
        return None
    content_type = _content_type(scope)
    if content_type is None:  # FastAPI parses these as JSON
        return "json" if scope.get("method") in ("POST", "PUT", "PATCH") else None
    lowered = content_type.lower()
    if b"json" in lowered:
        return "json"
    if lowered.startswith(b"multipart/form-data"):
        return "multipart"
    return None


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


async def _problem(kind: str, scope: Scope, body: bytes) -> tuple[int, str, str] | None:
    if kind == "multipart" and not multipart_complete(_content_type(scope) or b"", body):
        return (
            400,
            "The multipart body ends before its closing boundary: it was cut short.",
            "truncated_body",
        )
    if kind == "json" and await anyio.to_thread.run_sync(has_lone_surrogate, body):
        return (
            400,
            "The request body holds a lone UTF-16 surrogate escape (such as \\ud800): "
            "strings must be valid Unicode.",
            "invalid_unicode",
        )
    return None


class BodyCheckMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = _kind(scope)
        if kind is None:
            await self.app(scope, receive, send)
            return
        try:
            body = await _read_body(receive)
        except HTTPException as exc:
            code = _CODES.get(exc.status_code, "invalid_request")
            await send_error(send, exc.status_code, exc.detail, code)
            return
        problem = await _problem(kind, scope, body)
        if problem is not None:
            await send_error(send, *problem)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
