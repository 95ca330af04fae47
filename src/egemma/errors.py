"""One error hierarchy, the OpenAI error body, and the only exception handlers.

Code raises; handlers registered once in ``install_handlers`` turn every error into
``{"error": {"message", "type", "param", "code"}}`` with the right status. A 500 logs the traceback
and says only "Internal server error".
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class EgemmaError(Exception):
    """Base of every error a client may see."""

    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


class InvalidRequestError(EgemmaError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class AuthenticationError(EgemmaError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"

    def __init__(self, message: str = "Invalid or missing API key.") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFoundError(EgemmaError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class PayloadTooLargeError(EgemmaError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class RateLimitError(EgemmaError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        retry_after = max(1, int(retry_after))
        super().__init__(
            message or f"Rate limit exceeded. Try again in {retry_after} seconds.",
            headers={"Retry-After": str(retry_after)},
        )
        self.retry_after = retry_after


class UpstreamError(EgemmaError):
    status_code = 502
    error_type = "server_error"
    default_code = "upstream_error"


class UnavailableError(EgemmaError):
    status_code = 503
    error_type = "server_error"
    default_code = "server_busy"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = max(1, retry_after)


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=body, headers=headers)


async def _egemma_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EgemmaError)
    if exc.status_code >= 500 and not isinstance(exc, UnavailableError | UpstreamError):
        log.error("server error: %s", exc.message)
    return _json(exc.status_code, exc.body(), exc.headers)


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
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
    413: ("invalid_request_error", "payload_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
}


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        from egemma.security import denies

        if denies(request):  # deny by default: no key, no hint of which methods exist
            return await _egemma_handler(request, AuthenticationError())
        from egemma.openapi import allowed_methods

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


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json(500, error_body("Internal server error", "server_error", None, None))


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EgemmaError, _egemma_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(Exception, _unhandled)
