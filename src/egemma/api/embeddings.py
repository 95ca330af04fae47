"""``POST /embed`` (the original eGemma shape) and ``POST /v1/embeddings`` (OpenAI's).

Thin: read and check the request, hand texts to ``EmbeddingService``, shape the answer.
"""

from __future__ import annotations

import base64
import json
from functools import partial
from typing import Annotated

import anyio
import numpy as np
from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile
from openai.types import CreateEmbeddingResponse

from egemma.api.deps import EmbeddingsDep, StateDep
from egemma.errors import InvalidRequestError
from egemma.protocol.embeddings import MAX_INPUTS, EmbeddingRequest
from egemma.ratelimit import rate_limit
from egemma.services.embeddings.compact import COMPACT_FORMATS, compact
from egemma.services.embeddings.service import EmbeddingService, resize, truncate
from egemma.services.models.keep_alive import parse_keep_alive
from egemma.services.uploads import decode_upload

router = APIRouter(tags=["embeddings"])


def _json(body: str) -> Response:
    return Response(body, media_type="application/json")


def float_array(vector: np.ndarray) -> str:
    """A JSON array of float32 values: 9 significant digits round-trip float32 exactly, and
    %-formatting is ~4× faster than the json module's repr of the widened doubles."""
    values = vector.tolist()
    if not np.isfinite(vector).all():
        return json.dumps(values)
    return "[" + ",".join(["%.9g" % x for x in values]) + "]"  # noqa: UP031


@router.post(
    "/embed",
    summary="Embed an uploaded text file (original eGemma shape)",
    dependencies=[Depends(rate_limit("embed"))],
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {"embedding_768d": [0.1], "model": "m", "dimensions": 384}
                }
            }
        }
    },
)
async def embed(
    state: StateDep,
    request: Request,
    file: Annotated[UploadFile, File(description="UTF-8 text to embed.")],
    service: EmbeddingsDep,
    dimensions: Annotated[
        list[int] | None,
        Query(description="Sizes to return (repeatable); default the smallest trained size."),
    ] = None,
    prompt_name: Annotated[str, Query(description="Task prompt, e.g. query, document.")] = (
        "document"
    ),
    title: Annotated[str | None, Query(description="Document title (document prompts).")] = None,
) -> Response:
    settings = state.settings
    limit = settings.server.max_file_size_bytes
    text = decode_upload(
        await file.read(limit + 1),
        max_bytes=limit,
        binary_threshold=settings.server.binary_detection_threshold,
    )
    sizes = list(dict.fromkeys(dimensions or [service.default_dimensions]))
    for size in sizes:
        service.check_embed_dimensions(size)
    result = await service.embed(
        [text], prompt_name=prompt_name, title=title, is_disconnected=request.is_disconnected
    )
    parts = [f'"embedding_{d}d":{float_array(resize(result.vectors, d)[0])}' for d in sizes]
    # cognition-cli's EmbedResponse: `model` and `dimensions` (the model's own size; a larger
    # key is that vector zero-padded).
    parts += [
        f'"model":{json.dumps(service.engine.name)}',
        f'"dimensions":{service.engine.dimension}',
    ]
    return _json("{" + ",".join(parts) + "}")


INLINE_TOKEN_IDS = 4096  # more ids than this are decoded in a worker thread


async def _inputs(body: EmbeddingRequest, service: EmbeddingService) -> list[str]:
    raw = body.input
    if isinstance(raw, str):
        texts = [raw]
    elif raw and isinstance(raw[0], int | list):
        # Token ids are OpenAI's (cl100k_base), never this model's: issue 13.
        arrays = [raw] if isinstance(raw[0], int) else raw
        params = ["input"] if isinstance(raw[0], int) else [f"input[{i}]" for i in range(len(raw))]
        if len(arrays) > MAX_INPUTS:
            raise InvalidRequestError(
                f"input holds {len(arrays)} items; at most {MAX_INPUTS} are accepted.",
                param="input",
            )
        decode = partial(service.openai_tokens.decode, arrays, params)
        if sum(len(a) for a in arrays) > INLINE_TOKEN_IDS:
            texts = await anyio.to_thread.run_sync(decode)
        else:
            texts = decode()
    else:
        texts = [t for t in raw if isinstance(t, str)]
    if not texts:
        raise InvalidRequestError("input must not be empty.", param="input", code="empty_input")
    if len(texts) > MAX_INPUTS:
        raise InvalidRequestError(
            f"input holds {len(texts)} items; at most {MAX_INPUTS} are accepted.", param="input"
        )
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidRequestError(
                f"input[{i}] is empty.", param=f"input[{i}]", code="empty_input"
            )
    return texts


def _encode(vector: np.ndarray, encoding_format: str) -> str:
    """The JSON text of one ``embedding`` value (a row of ``compact`` for the integer formats)."""
    if encoding_format == "base64":
        return '"' + base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode() + '"'
    if encoding_format in COMPACT_FORMATS:
        return "[" + ",".join(map(str, vector.tolist())) + "]"
    return float_array(vector)


@router.post(
    "/v1/embeddings",
    summary="Create embeddings (OpenAI)",
    responses={200: {"model": CreateEmbeddingResponse}},
    dependencies=[Depends(rate_limit("embed"))],
)
async def create_embeddings(
    body: EmbeddingRequest,
    service: EmbeddingsDep,
    request: Request,
) -> Response:
    keep_alive = parse_keep_alive(body.keep_alive)
    texts = await _inputs(body, service)
    size = service.engine.dimension if body.dimensions is None else body.dimensions
    service.check_dimensions(size)
    result = await service.embed(
        texts,
        prompt_name=body.prompt_name,
        is_disconnected=request.is_disconnected,
        keep_alive=keep_alive,
    )
    vectors = result.vectors if size == service.engine.dimension else truncate(result.vectors, size)
    if body.encoding_format in COMPACT_FORMATS:
        vectors = compact(vectors, body.encoding_format)
    # Written by hand: the vectors are the whole payload, and this is the hot path.
    data = ",".join(
        f'{{"object":"embedding","index":{i},"embedding":{_encode(v, body.encoding_format)}}}'
        for i, v in enumerate(vectors)
    )
    tokens = result.total_tokens
    model = json.dumps(service.engine.name)
    usage = f'{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}'
    return _json(f'{{"object":"list","data":[{data}],"model":{model},"usage":{usage}}}')
