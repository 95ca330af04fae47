"""A llama.cpp grammar over a whole Harmony assistant turn, so any gpt-oss model (even one with
random weights) writes valid structure: an ``analysis`` message, then a ``final`` answer or a call
to one of the offered tools with arguments that match its schema.

The prompt ends with ``<|start|>assistant``; the grammar starts at the first ``<|channel|>``.
Harmony's structural tokens are matched as tokens (``<[id]>``, llama.cpp's token references);
``<|return|>`` and ``<|call|>`` are end-of-generation tokens in llama.cpp, which a grammar may not
name: they become allowed once the grammar is complete, and the engine stops there.

A tool's arguments are a JSON Schema the engine converts (``GrammarFrame.parts``): the frame names
them ``part-<i>`` and the engine splices the converted rules in. A custom tool's own GBNF (Lark
or regex input grammar) is spliced in here with its rules renamed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from egemma.services.prompting.schemas import bound_schema, text_format_schema
from egemma.services.prompting.types import ToolSpec

# Characters of chain of thought allowed per effort: real gpt-oss reasoning fits, and a model
# that never closes its analysis message is made to (a random-weight one never would).
ANALYSIS_CHARS = {"low": 2_000, "medium": 8_000, "high": 32_000}
# A free-form custom tool's input, bounded the same way (the grammar IR's runs use 256).
CUSTOM_INPUT_CHARS = 16_000
# Text that cannot contain a Harmony control token: "<" never followed by "|".
_SAFE_CHAR = '([^<] | "<" [^|])'
_NO_REASONING = frozenset({"none", "minimal"})


@dataclass(frozen=True)
class GrammarFrame:
    """GBNF text with ``root``, and the JSON Schemas (``part-<i>``) it references."""

    gbnf: str
    parts: tuple[tuple[str, str], ...] = ()


def _tok(ids: dict[str, int], name: str) -> str:
    return f"<[{ids[name]}]>"


def _literal(text: str) -> str:
    return json.dumps(text)


def _rename(gbnf: str, prefix: str) -> str:
    """A custom tool's GBNF with every rule name prefixed; ``root`` becomes ``prefix``.

    Names are renamed only outside string literals, character classes and token references.
    """
    out: list[str] = []
    i = 0
    while i < len(gbnf):
        c = gbnf[i]
        if c in '"[<':
            close = {'"': '"', "[": "]", "<": ">"}[c]
            j = i + 1
            while j < len(gbnf) and gbnf[j] != close:
                j += 2 if gbnf[j] == "\\" else 1
            out.append(gbnf[i : j + 1])
            i = j + 1
            continue
        match = re.match(r"[A-Za-z][A-Za-z0-9-]*", gbnf[i:])
        if match and (i == 0 or not (gbnf[i - 1].isalnum() or gbnf[i - 1] == "-")):
            name = match.group(0)
            out.append(prefix if name == "root" else f"{prefix}-{name}")
            i += len(name)
            continue
        out.append(c)
        i += 1
    return "".join(out)


class HarmonyGrammar:
    """Builds frames for one encoding's token ids."""

    def __init__(self, ids: dict[str, int]) -> None:
        self.ids = ids

    def _call(
        self, tool: ToolSpec, index: int, rules: list[str], parts: list[Any], *, header: str
    ) -> str:
        """Rule ``call-<i>``: ``header`` (GBNF), the rest of the tool's header, its input."""
        name = f"call-{index}"
        if tool.kind == "custom":
            body = f"custom-{index}"
            if tool.grammar:
                rules.append(_rename(tool.grammar, body).strip())
            else:
                rules.append(f"{body} ::= {_SAFE_CHAR}{{0,{CUSTOM_INPUT_CHARS}}}")
            rules.append(f"{name} ::= {header} {_tok(self.ids, '<|message|>')} {body}")
        else:
            part = f"part-{len(parts)}"
            parts.append((part, bound_schema(tool.parameters or {"type": "object"})))
            rules.append(
                f"{name} ::= {header} {_literal(' ')}{_tok(self.ids, '<|constrain|>')}"
                f"{_literal('json')} {_tok(self.ids, '<|message|>')} {part}"
            )
        return name

    def frame(
        self,
        tools: Sequence[ToolSpec],
        *,
        effort: str,
        text: dict[str, Any] | None,
    ) -> GrammarFrame:
        """``analysis`` (unless the effort is none/minimal), then ``final`` or one call."""
        ids = self.ids
        rules: list[str] = []
        parts: list[Any] = []
        actions = [
            self._call(t, i, rules, parts, header=_literal(f"commentary to=functions.{t.name}"))
            for i, t in enumerate(tools)
        ]
        schema = text_format_schema(text)
        final_body = "final-text"
        if schema is not None:
            final_body = f"part-{len(parts)}"
            parts.append((final_body, schema))
        else:
            rules.append(f"final-text ::= {_SAFE_CHAR}*")
        rules.append(
            f"final ::= {_tok(ids, '<|channel|>')} {_literal('final')} "
            f"{_tok(ids, '<|message|>')} {final_body}"
        )
        calls = " | ".join(f"{_tok(ids, '<|channel|>')} {a}" for a in actions)
        action = f"final | {calls}" if calls else "final"
        level = effort.strip().lower() if effort else "medium"
        if level in _NO_REASONING:
            head = [f"root ::= {action}"]
        else:
            limit = ANALYSIS_CHARS.get(level, ANALYSIS_CHARS["high"])
            head = [
                "root ::= analysis action",
                f"action ::= {action}",
                f"analysis ::= {_tok(ids, '<|channel|>')} {_literal('analysis')} "
                f"{_tok(ids, '<|message|>')} thought {_tok(ids, '<|end|>')} "
                f"{_tok(ids, '<|start|>')} {_literal('assistant')}",
                f"thought ::= {_SAFE_CHAR}{{1,{limit}}}",
            ]
        encoded = tuple((name, json.dumps(schema)) for name, schema in parts)
        return GrammarFrame("\n".join([*head, *rules]) + "\n", encoded)

    def call_choice(self, tools: Sequence[ToolSpec]) -> GrammarFrame:
        """After a prefilled ``<|channel|>commentary to=functions.``: one offered tool's name,
        the rest of its header and its input (``tool_choice: required`` over several tools)."""
        rules: list[str] = []
        parts: list[Any] = []
        options = [
            self._call(t, i, rules, parts, header=_literal(t.name)) for i, t in enumerate(tools)
        ]
        head = f"root ::= {' | '.join(options)}"
        encoded = tuple((name, json.dumps(schema)) for name, schema in parts)
        return GrammarFrame("\n".join([head, *rules]) + "\n", encoded)
