"""Wire models for ``POST /v1/embeddings`` (OpenAI) and ``POST /embed`` (the original eGemma).

Responses reuse ``openai.types`` (``CreateEmbeddingResponse``); with ``encoding_format="base64"``
each ``embedding`` is a base64 string of little-endian float32, as openai-python expects.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


class EmbeddingRequest(BaseModel):
    """OpenAI ``embeddings.create`` body; unknown fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]] = Field(
        description="A string, a list of strings, or OpenAI (cl100k_base) token ids.",
    )
    model: str | None = Field(None, description="Accepted; the server's embedding model answers.")
    encoding_format: Literal["float", "base64", "int8", "uint8", "binary", "ubinary"] = Field(
        "float",
        description="openai-python asks for base64 unless told otherwise. eGemma extension, "
        "Cohere's names: int8/uint8 (scaled per vector, compare by cosine), binary/ubinary "
        "(sign bits packed 8 per byte, compare by Hamming distance).",
    )
    dimensions: int | None = Field(
        None, description="Truncate to this size, then re-normalise (1..model dimension)."
    )
    user: str | None = Field(None, description="Accepted and ignored.")
    keep_alive: Any = Field(
        default=None,
        description="eGemma extension (Ollama's): how long the model stays loaded after this "
        "request: seconds, a duration such as '5m', 0 to unload at once, -1 to keep it loaded.",
    )
    prompt_name: str | None = Field(
        None, description="eGemma extension: a task prompt of the model (e.g. query, document)."
    )
