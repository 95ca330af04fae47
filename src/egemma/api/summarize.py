"""``POST /summarize``: the original eGemma multipart form → ``{"language", "summary", …}``.

Form fields as the original (and cognition-cli) send them: ``file``, ``persona``, ``model_name``
(``gemini…`` uses the Gemini API, anything else the local model), ``max_tokens``,
``temperature``, ``enable_safety``, ``goal``. The answer adds ``model``, ``cached`` and
``chunks`` (map-reduce parts) to the original's ``language`` and ``summary``.

Status choices: local summarization disabled + a non-Gemini model → 400 (the original's
message); a Gemini model without ``GEMINI_API_KEY`` is answered by the local model when
``SUMMARY_LOCAL_ENABLED`` (``model`` says which; cognition-cli always names Gemini), else 400
``gemini_not_configured`` (a property of this server that retrying will not change); a model
that should be there but is not loaded → 503.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from egemma.api.deps import SummarizeDep
from egemma.ratelimit import rate_limit
from egemma.services.summarize.service import SummaryRequest

router = APIRouter(tags=["summaries"])

MAX_GOAL_CHARS = 4000
MAX_NAME_CHARS = 200

_EXAMPLE = {
    "language": "Python",
    "summary": "Defines a CLI entry point that …",
    "model": "smollm2-135m-instruct",
    "cached": False,
    "chunks": 1,
}


def _blank_to_none(value: str | None) -> str | None:
    return value if value is not None and value.strip() else None


@router.post(
    "/summarize",
    summary="Summarise an uploaded file with a persona (local model or Gemini)",
    dependencies=[Depends(rate_limit("summarize"))],
    responses={200: {"content": {"application/json": {"example": _EXAMPLE}}}},
)
async def summarize(
    request: Request,
    file: Annotated[UploadFile, File(description="UTF-8 text; its extension picks the language.")],
    service: SummarizeDep,
    persona: Annotated[
        str | None,
        Form(
            max_length=MAX_NAME_CHARS,
            description="Persona name (GET /personas); default assistant for Markdown, "
            "developer otherwise.",
        ),
    ] = None,
    model_name: Annotated[
        str | None,
        Form(
            max_length=MAX_NAME_CHARS,
            description="A name starting with 'gemini' uses the Gemini API (the local model "
            "when GEMINI_API_KEY is unset); anything else the local model.",
        ),
    ] = None,
    max_tokens: Annotated[
        int | None,
        Form(ge=1, le=32768, description="Summary length in tokens (default SUMMARY_MAX_TOKEN)."),
    ] = None,
    temperature: Annotated[
        float | None,
        Form(ge=0.0, le=2.0, allow_inf_nan=False, description="Default SUMMARY_TEMP."),
    ] = None,
    enable_safety: Annotated[
        bool, Form(description="Gemini only: block harmful content at BLOCK_LOW_AND_ABOVE.")
    ] = False,
    goal: Annotated[
        str | None,
        Form(max_length=MAX_GOAL_CHARS, description="What the reader wants from the summary."),
    ] = None,
    keep_alive: Annotated[
        str | None,
        Form(
            max_length=32,
            description="eGemma extension (Ollama's): how long the local model stays loaded "
            "after this request: seconds, a duration such as '5m', 0 to unload at once, -1 to "
            "keep it loaded.",
        ),
    ] = None,
) -> dict[str, Any]:
    # One byte past the cap is enough to know the file is too large.
    data = await file.read(service.max_file_size_bytes + 1)
    summary_request = SummaryRequest(
        filename=file.filename,
        data=data,
        persona=_blank_to_none(persona),
        model_name=_blank_to_none(model_name),
        max_tokens=max_tokens,
        temperature=temperature,
        enable_safety=enable_safety,
        goal=_blank_to_none(goal),
        keep_alive=_blank_to_none(keep_alive),
    )
    result = await service.summarize(summary_request, request.is_disconnected)
    return result.body()
