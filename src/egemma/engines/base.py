"""Engine contracts: small Protocols and frozen dataclasses shared by every engine.

Engines never import FastAPI or ``egemma.protocol``; services translate wire models into these
dataclasses in exactly one place and back again.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

CapabilityState = Literal["loaded", "not_loaded", "disabled", "error"]


@dataclass
class CapabilityStatus:
    """What ``/health`` reports for one capability (chat, local summary, gemini, embeddings)."""

    name: str
    status: CapabilityState = "not_loaded"
    reason: str | None = None
    context_length: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Chat: neutral conversation turns, rendered by a prompt format (Harmony or a GGUF template)
# --------------------------------------------------------------------------------------------

TurnKind = Literal[
    "system", "developer", "user", "assistant", "reasoning", "tool_call", "tool_result"
]


@dataclass(frozen=True)
class Turn:
    """One item of a conversation, independent of the wire protocol.

    - ``system`` / ``developer`` / ``user`` / ``assistant``: ``text``.
    - ``reasoning``: the chain of thought of an earlier assistant turn in ``text``.
    - ``tool_call``: ``name``, ``call_id``, ``arguments`` (a JSON string).
    - ``tool_result``: ``call_id``, ``name`` (resolved from the matching call), ``text`` (output).
    """

    kind: TurnKind
    text: str = ""
    name: str | None = None
    call_id: str | None = None
    arguments: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    """A flat function tool: name, description and JSON Schema parameters (may be empty)."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    strict: bool = False


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.3
    top_p: float = 0.95
    min_p: float = 0.05
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    grammar: str | None = None  # GBNF text; llama.cpp constrains decoding with it


@dataclass(frozen=True)
class GeneratedToken:
    """One decoded token: its id and the UTF-8 text it completes (may be '' mid-codepoint)."""

    token_id: int
    text: str


DeltaKind = Literal["reasoning", "text", "tool_call", "tool_arguments"]


@dataclass(frozen=True)
class OutputDelta:
    """A piece of parsed model output, in the order it arrived.

    - ``reasoning``: chain-of-thought text (Harmony ``analysis`` channel).
    - ``text``: user-visible answer text (Harmony ``final`` channel, or plain template output).
    - ``tool_call``: a new call starts; ``name`` is the function name. Its arguments follow as
      ``tool_arguments`` deltas until another delta kind or the end.
    """

    kind: DeltaKind
    text: str = ""
    name: str | None = None


class OutputParser(Protocol):
    """Turns generated tokens into ``OutputDelta``s incrementally."""

    def feed(self, token: GeneratedToken) -> list[OutputDelta]: ...

    def finish(self) -> list[OutputDelta]: ...


@runtime_checkable
class ChatEngine(Protocol):
    """One loaded llama.cpp model behind a bounded FIFO (one generation at a time)."""

    name: str
    n_ctx: int

    def tokenize(self, text: str, *, special: bool = True) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def generate(
        self, prompt: Sequence[int], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[GeneratedToken]:
        """Blocking; run in a worker thread. Stops before the next token once ``cancel`` is set."""
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

    def decode(self, ids: Sequence[int]) -> str: ...

    def close(self) -> None: ...


class AsyncCloseable(Protocol):
    async def aclose(self) -> None: ...


AsyncTextStream = AsyncIterator[str]
