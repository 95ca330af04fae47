"""Engine contracts: the Protocols every model runtime implements, and the frozen dataclasses that
cross the boundary.

Engines never import FastAPI, ``egemma.protocol`` or ``egemma.services``; services turn wire
requests into these dataclasses in exactly one place (``services/responses``) and read tokens
and ``GenerationStats`` back. A chat engine owns its admission (a FIFO today, batched slots
later): callers ``admit`` to get a ``Slot`` lease, ``generate`` while they hold it, and release
it in every exit path.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

CapabilityState = Literal["loaded", "not_loaded", "disabled", "error"]
FinishReason = Literal["stop", "length", "cancelled"]
Disconnected = Callable[[], Awaitable[bool]]


@dataclass
class CapabilityStatus:
    """What ``/health`` reports for one capability (chat, local summary, gemini, embeddings)."""

    name: str
    status: CapabilityState = "not_loaded"
    reason: str | None = None
    context_length: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Chat
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecialTokens:
    """The model's own begin/end-of-sequence tokens, as prompt formats need them.

    ``bos_id``/``eos_id`` are -1 when the vocabulary has none; ``add_bos`` says whether the model
    expects the BOS token in front of every prompt (GGUF ``tokenizer.ggml.add_bos_token``).
    """

    bos_id: int = -1
    eos_id: int = -1
    bos_text: str = ""
    eos_text: str = ""
    add_bos: bool = False


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one generation. ``json_schema`` (canonical JSON text) constrains decoding
    with a grammar built from it, ``gbnf`` with that grammar text itself; generation ends at
    ``max_tokens``, an end-of-generation token or one of ``stop_token_ids``."""

    max_tokens: int
    temperature: float = 0.3
    top_p: float = 0.95
    min_p: float = 0.05
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop_token_ids: tuple[int, ...] = ()
    json_schema: str | None = None
    gbnf: str | None = None
    grammar_parts: tuple[tuple[str, str], ...] = ()
    """With ``gbnf``: (rule name, canonical JSON Schema) pairs the engine converts into rules of
    that name, which ``gbnf`` references (a Harmony turn's tool arguments)."""
    pin: str | None = None
    """Keeps a conversation on its KV slot (batched engine): ``prompt_cache_key`` or the
    conversation id."""


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: prompt tokens, sampling, and the flag that stops it before the next
    token (set by a departed client, the drain, or the caller's ``finally``)."""

    prompt: tuple[int, ...]
    params: SamplingParams
    cancel: threading.Event


@dataclass(frozen=True)
class GeneratedToken:
    """One decoded token: its id and the UTF-8 text it completes (may be '' mid-codepoint;
    id -1 carries a final flush of undecodable bytes)."""

    token_id: int
    text: str


@dataclass
class GenerationStats:
    """Filled in by the engine while a generation runs; read by services for ``usage``."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: FinishReason = "stop"


class TokenStream(Protocol):
    """The tokens of one generation as they are produced; ``stats`` is final once the stream
    ends. Closing the stream early stops the generation."""

    stats: GenerationStats

    def __aiter__(self) -> AsyncIterator[GeneratedToken]: ...

    async def aclose(self) -> None: ...


class GrammarError(ValueError):
    """The engine cannot constrain decoding to this schema (its message says why)."""


class AdmissionError(Exception):
    """Base of the reasons ``ChatEngine.admit`` refuses a caller."""


class QueueFullError(AdmissionError):
    """No room to wait."""


class QueueTimeoutError(AdmissionError):
    """Waited longer than the queue timeout."""


class AdmissionClosedError(AdmissionError):
    """The server is draining: no one may wait any more."""


class ClientGoneError(AdmissionError):
    """The client disconnected while waiting."""


class Slot(Protocol):
    """A lease on the model, from ``admit``. ``release`` is idempotent."""

    def release(self) -> None: ...


@dataclass(frozen=True)
class AdmissionStats:
    """What ``/metrics`` shows of one model's admission."""

    depth: int
    busy: bool
    admitted: int
    rejected: int
    abandoned: int


@runtime_checkable
class ChatEngine(Protocol):
    """One loaded chat model: its facts, its tokenizer, its admission and its generations."""

    name: str
    n_ctx: int
    architecture: str
    chat_template: str | None
    special: SpecialTokens
    identity: str
    """Names the weights for cache keys (the file path for a GGUF)."""

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Blocking: call from a worker thread. Safe while a generation runs."""
        ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def token_id(self, text: str) -> int | None:
        """The id of a special token such as ``<end_of_turn>``, if it is a single token."""
        ...

    async def admit(self, is_disconnected: Disconnected | None = None) -> Slot:
        """Wait for the model: raises an ``AdmissionError`` when full, too slow, closed or the
        client left while waiting."""
        ...

    def generate(self, request: GenerationRequest) -> TokenStream:
        """Stream a generation; the caller holds a ``Slot``."""
        ...

    def check_grammar(self, json_schema: str) -> None:
        """Blocking: build the grammar for ``json_schema`` (canonical JSON text, as in
        ``SamplingParams``) before admission; raise ``GrammarError`` if it cannot be built."""
        ...

    def admission_stats(self) -> AdmissionStats: ...

    def close_admission(self) -> None:
        """Drain: turn away every waiter and every later caller; holders keep their slots."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


class EmbeddingEngine(Protocol):
    """Encodes texts to L2-normalised full-dimension vectors (``engines.onnx``; a hash-based fake
    in tests). Blocking: the embeddings service calls ``encode`` from a worker thread, one batch
    at a time. ``identity`` names the weights for cache keys; ``prompts`` maps task prompt names
    to text prefixes; ``matryoshka_dims`` lists the trained truncation sizes (may be empty)."""

    name: str
    dimension: int
    max_length: int
    identity: str
    prompts: Mapping[str, str]
    default_prompt_name: str | None
    matryoshka_dims: tuple[int, ...]

    def encode(self, texts: Sequence[str]) -> tuple[Any, list[int]]:
        """(n × dimension float32 array of unit vectors, token count per text)."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------
# Reranking
# --------------------------------------------------------------------------------------------


class RerankEngine(Protocol):
    """A cross-encoder: scores (query, document) pairs read together by one model
    (``engines.onnx_rerank``). Blocking: the rerank service calls ``score`` from a worker
    thread. ``identity`` names the weights; ``max_length`` is the longest pair in tokens (a longer
    pair is truncated, longest side first, as Hugging Face tokenizers do)."""

    name: str
    max_length: int
    identity: str

    def score(self, query: str, documents: Sequence[str]) -> tuple[Any, list[int]]:
        """(n float32 raw logits, one per document in order; token count per pair)."""
        ...

    def close(self) -> None: ...
