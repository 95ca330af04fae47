"""``POST /parse-ast``: multipart ``file`` + form ``language`` → the structure document.

Python answers the original eGemma JSON field for field; JavaScript, TypeScript, Go, Rust and Java
answer the same shape (see ``services/ast``). Parsing runs in bounded worker processes.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from egemma.api.deps import AstDep

router = APIRouter(tags=["ast"])


@router.post(
    "/parse-ast",
    summary="Extract imports, functions, classes and exports from a source file",
)
async def parse_ast(
    file: Annotated[UploadFile, File(description="The source file.")],
    language: Annotated[
        str, Form(description="python, javascript, typescript (or tsx), go, rust or java.")
    ],
    service: AstDep,
) -> dict[str, Any]:
    # One byte past the cap is enough to know the file is too large.
    data = await file.read(service.limits.max_source_bytes + 1)
    return await service.parse(data, language)
