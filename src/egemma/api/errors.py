"""The only exception handlers: every error leaves as OpenAI's error body with its status.

The status and ``type`` come from the error class (``egemma.errors``); FastAPI's validation
errors, Starlette's HTTP errors and anything unexpected are mapped here, once. A 405 on a
protected path without the key is a 401 (deny by default: no hint of which methods exist).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from egemma.errors import (
    AuthenticationError,
    ClientLeftError,
    EgemmaError,
    UnavailableError,
    UpstreamError,
    error_body,
)
from egemma.openapi import allowed_methods
from egemma.security import denies

log = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left; nobody reads the body


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=body, headers=headers)


async def _egemma_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EgemmaError)
    if exc.status_code >= 500 and not isinstance(exc, UnavailableError | UpstreamError):
        log.error("server error: %s", exc.message)
    return _json(exc.status_code, exc.body(), exc.headers)


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    # Only the leading element names where the value came from: a body field may itself be
    # called "query" (/v1/rerank), and must still be named.
    if loc and loc[0] in ("body", "query", "path", "header", "form", "cookie"):
        loc = loc[1:]
    parts = [str(p) for p in loc]
    if not parts:
        return None
    out = parts[0]
    for part in parts[1:]:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


async def _validation_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "Invalid request."}
    param = _param_from_loc(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "Invalid request."))
    if first.get("type") == "json_invalid":
        msg = "The request body is not valid JSON."
        param = None
    message = f"{param}: {msg}" if param else msg
    return _json(400, error_body(message, "invalid_request_error", param, "invalid_request"))


_HTTP_CODES = {
    400: ("invalid_request_error", "invalid_request"),  # FastAPI: a body that is not JSON
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("invalid_request_error", "request_timeout"),
    413: ("invalid_request_error", "payload_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
}


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        if denies(request):  # deny by default: no key, no hint of which methods exist
            return await _egemma_handler(request, AuthenticationError())
        path = getattr(request.scope.get("route"), "path", "")
        methods = allowed_methods(request.app, path)
        if methods:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(methods)}
    error_type, code = _HTTP_CODES.get(exc.status_code, ("invalid_request_error", None))
    if exc.status_code == 404:
        message = f"Not found: {request.method} {request.url.path}"
    elif exc.status_code >= 500:
        error_type, message = "server_error", "Internal server error"
    else:
        message = str(exc.detail)
    headers = dict(exc.headers or {})
    return _json(exc.status_code, error_body(message, error_type, None, code), headers)


async def _client_left(_: Request, exc: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json(500, error_body("Internal server error", "server_error", None, None))


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EgemmaError, _egemma_handler)
    app.add_exception_handler(ClientLeftError, _client_left)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(Exception, _unhandled)
