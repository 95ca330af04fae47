"""What prompt formats render and parse: neutral turns and tools in, output deltas out.

Independent of the wire protocol (``services/responses`` converts items into these) and of the
engine (which only sees token ids).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from egemma.engines.base import GeneratedToken

TurnKind = Literal[
    "system", "developer", "user", "assistant", "reasoning", "tool_call", "tool_result"
]


@dataclass(frozen=True)
class Turn:
    """One item of a conversation, independent of the wire protocol.

    - ``system`` / ``developer`` / ``user`` / ``assistant``: ``text``.
    - ``reasoning``: the chain of thought of an earlier assistant turn in ``text``.
    - ``tool_call``: ``name``, ``call_id``, ``arguments`` (a JSON string); a custom tool's
      call has ``custom`` set and its free-form input in ``text``.
    - ``tool_result``: ``call_id``, ``name`` (resolved from the matching call), ``text`` (output).
    """

    kind: TurnKind
    text: str = ""
    name: str | None = None
    call_id: str | None = None
    arguments: str | None = None
    custom: bool = False


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: name, description and JSON Schema parameters (may be empty).

    ``kind`` is ``function`` (JSON arguments) or ``custom`` (freeform text input, optionally
    constrained by ``grammar``, a llama.cpp GBNF text). ``name`` is what the model sees; a
    function from a ``namespace`` tool is shown as ``namespace.local`` and reported back to
    the client as ``local`` with its ``namespace``.
    """

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    strict: bool = False
    kind: Literal["function", "custom"] = "function"
    namespace: str | None = None
    local_name: str | None = None
    grammar: str | None = None
    format: dict[str, Any] | None = field(default=None, compare=False)
    """A custom tool's grammar ``format`` as the client sent it (echoed in the response)."""
    check: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)
    """For a grammar-constrained custom tool: does a given input match the grammar?"""

    @property
    def wire_name(self) -> str:
        return self.local_name or self.name


@dataclass(frozen=True)
class ToolMode:
    """What the request allows: ``none``, ``auto`` or ``required`` over ``tools``."""

    mode: str
    tools: tuple[ToolSpec, ...]

    @property
    def offered(self) -> tuple[ToolSpec, ...]:
        return () if self.mode == "none" else self.tools


NO_TOOLS = ToolMode("none", ())

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


def feed_all(parser: OutputParser, tokens: Sequence[int]) -> list[OutputDelta]:
    """Feed tokens the prompt already holds (a prefilled channel header) to ``parser``; the
    deltas they imply (a forced Harmony call opens there)."""
    deltas: list[OutputDelta] = []
    for token_id in tokens:
        deltas += parser.feed(GeneratedToken(token_id, ""))
    return deltas
