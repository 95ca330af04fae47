"""The OpenAPI document, finished in one place so it tells the truth about every route.

FastAPI documents a 422 for validation errors; eGemma answers 400 with the OpenAI error body, and
also 401, 404, 413, 429 and 503 (with ``Retry-After``) on every protected route. Streaming routes
also answer ``text/event-stream``: below OpenAPI 3.2 that is described as one event object whose
``data`` is JSON (reliability.md §8). Schemathesis checks the running app against this document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}
ERRORS: dict[str, tuple[str, dict[str, Any]]] = {
    "400": ("Invalid request: validation, limits, context length, bad uploads.", {}),
    "401": (
        "Missing or wrong API key.",
        {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    ),
    "404": ("Unknown model, response, conversation or item.", {}),
    "413": ("Request body or upload too large.", {}),
    "429": ("Rate limit exceeded.", RETRY_AFTER),
    "503": ("Model busy or not loaded, store locked, or the server is draining.", RETRY_AFTER),
}
UPSTREAM = {"/summarize"}  # Gemini: 502 upstream errors
STREAMING = {"/v1/responses", "/v1/chat/completions"}
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "One server-sent event: `event: <type>` and one JSON `data:` line.",
    "properties": {
        "event": {"type": "string"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"type": "object", "required": ["type", "sequence_number"]},
        },
    },
}


def _error(description: str, headers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": ERROR_REF}},
    }
    if headers:
        out["headers"] = headers
    return out


def _finish(schema: dict[str, Any], public: frozenset[str]) -> dict[str, Any]:
    schema.setdefault("components", {}).setdefault("schemas", {})["ErrorResponse"] = ERROR_SCHEMA
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            responses.pop("422", None)
            if path in public:
                if path == "/ready":
                    responses["503"] = {"description": "Not ready, or draining."}
                continue
            for status, (description, headers) in ERRORS.items():
                responses.setdefault(status, _error(description, headers))
            if path in UPSTREAM:
                responses.setdefault("502", _error("The upstream model API failed.", {}))
            if path in STREAMING:
                content = responses.setdefault("200", {}).setdefault("content", {})
                content["text/event-stream"] = {"schema": SSE_EVENT}
    return schema


def install_openapi(app: FastAPI, public: frozenset[str]) -> None:
    """Replace ``app.openapi`` with the finished document (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = _finish(schema, public)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method served at ``path`` (a 405's ``Allow``: Starlette names only one route's)."""
    operations = app.openapi().get("paths", {}).get(path, {})
    return sorted(m.upper() for m in operations)
