"""What a prompt format makes of a conversation: the ``PromptPlan``, and the ``Prompter`` contract
each format (``formats.py``: a GGUF chat template, Harmony) implements.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from egemma.services.prompting.types import OutputParser, ToolMode, Turn


@dataclass
class PromptPlan:
    """Prompt tokens, stop tokens, a parser factory and an optional JSON Schema for the grammar.

    ``prefill`` holds tokens at the end of ``tokens`` that the format wrote on the model's behalf
    (a Harmony channel header): the parser is fed them before the first generated token.
    """

    tokens: list[int]
    stop_token_ids: tuple[int, ...]
    make_parser: Callable[[], OutputParser]
    json_schema: dict[str, Any] | None = None
    prefill: list[int] = field(default_factory=list)
    family: str = "template"
    gbnf: str | None = None
    """A GBNF grammar (a custom tool's input) instead of ``json_schema``."""
    grammar_parts: tuple[tuple[str, str], ...] = ()
    """JSON Schemas (name, canonical JSON) the ``gbnf`` frame references by rule name; the
    engine converts each and splices it in (a whole Harmony turn: ``harmony_grammar.py``)."""

    def grammar_key(self) -> str | None:
        """The schema as the canonical JSON text engines build (and cache) grammars from."""
        return None if self.json_schema is None else json.dumps(self.json_schema)


class Prompter(Protocol):
    """One model's prompt format. Blocking (renders and tokenizes): call off the event loop."""

    family: str

    def plan(
        self,
        turns: Sequence[Turn],
        *,
        instructions: str | None,
        tool_mode: ToolMode,
        effort: str,
        text: dict[str, Any] | None,
    ) -> PromptPlan: ...
