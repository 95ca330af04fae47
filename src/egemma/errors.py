"""One error hierarchy and the OpenAI error body, importable by every layer (no HTTP framework).

Code raises; the handlers in ``api/errors.py`` turn every error into
``{"error": {"message", "type", "param", "code"}}`` with the class's status. A 500 logs the
traceback and says only "Internal server error".
"""

from __future__ import annotations

from typing import Any


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


class GenerationFailedError(EgemmaError):
    """A generation that ended ``failed`` where the API has no failed-response shape to carry
    it (non-streamed chat completions): a 500 with the response's own error code."""

    default_code = "server_error"


class UnavailableError(EgemmaError):
    status_code = 503
    error_type = "server_error"
    default_code = "server_busy"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = max(1, retry_after)


class DrainingError(UnavailableError):
    """New work while the server shuts down (reliability.md §4): 503, come back elsewhere."""

    def __init__(self) -> None:
        super().__init__("The server is shutting down.", retry_after=5, code="draining")


class ClientLeftError(Exception):
    """The client went away before its answer started; nothing is sent (logged as 499)."""


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
