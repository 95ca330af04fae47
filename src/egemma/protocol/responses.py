"""Request bodies of ``POST /v1/responses`` and ``/v1/chat/completions``.

Every field of the OpenAI request is declared (in the API reference's order); unknown or
unimplemented ones are accepted and ignored (``extra="allow"``). Lenient where clients are sloppy
(items are checked by ``services/items.py`` with precise ``param``s), strict where coercion is
dangerous: ``StrictBool`` for ``stream``/``store``, finite floats, integer token budgets.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool


def _a_json_number(value: Any) -> Any:
    """Numbers must be JSON numbers: ``true`` and ``"10"`` are not 10 (``16.0`` is 16)."""
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON number")
    return value


Number = BeforeValidator(_a_json_number)
FiniteFloat = Annotated[float, Field(allow_inf_nan=False), Number]
TokenBudget = Annotated[int, Field(ge=1, le=1_048_576, strict=False), Number]
JsonInt = Annotated[int, Number]
# OpenAI's range for presence/frequency penalties (llama.cpp applies them as given).
Penalty = Annotated[FiniteFloat, Field(ge=-2.0, le=2.0)]


class ReasoningParam(BaseModel):
    model_config = ConfigDict(extra="allow")

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class TextParam(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    background: StrictBool | None = None
    conversation: str | dict[str, Any] | None = None
    frequency_penalty: Penalty | None = None
    include: list[str] | None = None
    input: str | list[Any] | None = None
    instructions: str | None = None
    keep_alive: Any = Field(
        default=None,
        description="eGemma extension (Ollama's): how long the model stays loaded after this "
        "request: seconds, a duration such as '5m', 0 to unload at once, -1 to keep it loaded.",
    )
    max_output_tokens: TokenBudget | None = None
    max_tool_calls: JsonInt | None = None
    metadata: dict[str, Any] | None = None
    model: str | None = None
    parallel_tool_calls: StrictBool | None = None
    presence_penalty: Penalty | None = None
    previous_response_id: str | None = None
    prompt: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    reasoning: ReasoningParam | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    store: StrictBool | None = None
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    temperature: Annotated[FiniteFloat, Field(ge=0.0, le=2.0)] | None = None
    text: TextParam | None = None
    tool_choice: str | dict[str, Any] | None = None
    tools: list[Any] | None = None
    top_logprobs: Annotated[JsonInt, Field(ge=0, le=20)] | None = None
    top_p: Annotated[FiniteFloat, Field(gt=0.0, le=1.0)] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    messages: list[Any] = Field(min_length=1)
    model: str | None = None
    frequency_penalty: Penalty | None = None
    keep_alive: Any = Field(
        default=None,
        description="eGemma extension (Ollama's): how long the model stays loaded after this "
        "request: seconds, a duration such as '5m', 0 to unload at once, -1 to keep it loaded.",
    )
    logprobs: StrictBool | None = None
    max_completion_tokens: TokenBudget | None = None
    max_tokens: TokenBudget | None = None
    metadata: dict[str, Any] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    parallel_tool_calls: StrictBool | None = None
    presence_penalty: Penalty | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    response_format: dict[str, Any] | None = None
    seed: JsonInt | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    store: StrictBool | None = None
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    temperature: Annotated[FiniteFloat, Field(ge=0.0, le=2.0)] | None = None
    tool_choice: str | dict[str, Any] | None = None
    tools: list[Any] | None = None
    top_p: Annotated[FiniteFloat, Field(gt=0.0, le=1.0)] | None = None
    user: str | None = None


class CompactRequest(BaseModel):
    """``POST /v1/responses/compact`` (openai-python ``responses.compact``)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[Any] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    prompt_cache_key: str | None = None

    def as_responses_request(self) -> ResponsesRequest:
        return ResponsesRequest(
            model=self.model,
            input=self.input,
            instructions=self.instructions,
            previous_response_id=self.previous_response_id,
            store=False,
        )
