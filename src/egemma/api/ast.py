"""``POST /parse-ast``: multipart ``file`` + form ``language`` → the structure document.

Python answers the original eGemma JSON field for field; JavaScript, TypeScript, Go, Rust and Java
answer the same shape (see ``services/ast``). Parsing runs in bounded worker processes, created on
first use and stopped at shutdown.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from egemma.errors import InvalidRequestError, PayloadTooLargeError, UnavailableError
from egemma.services.ast import (
    AstLimits,
    AstService,
    AstSourceError,
    AstSourceTooLargeError,
    AstUnavailableError,
    UnsupportedLanguageError,
)
from egemma.settings import Settings

router = APIRouter(tags=["ast"])


async def ast_service(request: Request) -> AstService:
    """The app's AST service, created on first use (runs on the event loop: no race)."""
    state = request.app.state
    service: AstService | None = getattr(state, "ast_service", None)
    if service is None:
        settings: Settings = state.settings
        limits = AstLimits(
            max_source_bytes=settings.ast.max_source_bytes,
            timeout_seconds=settings.ast.timeout_seconds,
            memory_bytes=settings.ast.memory_mb * 1024 * 1024,
            workers=settings.ast.workers,
            max_jobs_per_worker=settings.ast.max_jobs_per_worker,
        )
        service = AstService(limits)
        state.ast_service = service

        async def _close() -> None:
            service.close()

        state.shutdown_hooks.append(_close)
    return service


def _client_error(exc: Exception) -> Exception:
    """The wire error for a service error (the service layer cannot import FastAPI's errors)."""
    if isinstance(exc, UnsupportedLanguageError):
        return InvalidRequestError(exc.message, param="language", code="unsupported_language")
    if isinstance(exc, AstSourceTooLargeError):
        return PayloadTooLargeError(exc.message, param="file")
    if isinstance(exc, AstSourceError):
        code = "syntax_error" if exc.line is not None else "invalid_source"
        return InvalidRequestError(exc.describe(), param="file", code=code)
    if isinstance(exc, AstUnavailableError):
        return UnavailableError(str(exc), retry_after=1)
    return exc


@router.post(
    "/parse-ast",
    summary="Extract imports, functions, classes and exports from a source file",
)
async def parse_ast(
    file: Annotated[UploadFile, File(description="The source file.")],
    language: Annotated[
        str, Form(description="python, javascript, typescript (or tsx), go, rust or java.")
    ],
    service: Annotated[AstService, Depends(ast_service)],
) -> dict[str, Any]:
    # One byte past the cap is enough to know the file is too large.
    data = await file.read(service.limits.max_source_bytes + 1)
    try:
        return await service.parse(data, language)
    except (UnsupportedLanguageError, AstSourceError, AstUnavailableError) as exc:
        raise _client_error(exc) from None
