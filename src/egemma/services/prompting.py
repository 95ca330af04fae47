"""Turns + tools → prompt tokens, stop tokens, an output parser and an optional JSON Schema for the
grammar, in the model's own family: Harmony for gpt-oss, the GGUF chat template for everything else.

Constrained decoding: ``tool_choice`` required/named makes the output a JSON call whose arguments
match the tool's ``parameters``; ``text.format`` json_schema/json_object makes the answer JSON that
matches. llama.cpp builds the grammar from the schema (``LlamaGrammar.from_json_schema``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from egemma.engines.base import OutputParser, ToolSpec, Turn
from egemma.services import templates
from egemma.services.context import ToolMode
from egemma.services.toolcalls import JsonCallParser, TextParser, ToolTagParser

log = logging.getLogger(__name__)

# Bounds keep grammar-constrained strings and numbers from running on to the token cap (a measured
# failure mode of small models: models-on-this-machine.md §4).
MAX_STRING = 512
MAX_ITEMS = 64


@dataclass
class PromptPlan:
    tokens: list[int]
    stop_token_ids: tuple[int, ...]
    make_parser: Callable[[], OutputParser]
    json_schema: dict[str, Any] | None = None
    prefill: list[int] = field(default_factory=list)  # tokens already "generated" (Harmony)
    family: str = "template"


def bound_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``schema`` with string lengths and array sizes bounded where the user set none
    (the grammar only: calls are still validated against the tool's own schema). Numbers are
    already bounded to 16 digits by llama.cpp's converter."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if isinstance(value, dict):
            out[key] = (
                {k: bound_schema(v) for k, v in value.items()}
                if key in ("properties", "$defs", "definitions")
                else bound_schema(value)
            )
        elif isinstance(value, list):
            out[key] = [bound_schema(v) if isinstance(v, dict) else v for v in value]
        else:
            out[key] = value
    if out.get("type") == "string" and "maxLength" not in out and "enum" not in out:
        out["maxLength"] = MAX_STRING
    if out.get("type") == "array" and "maxItems" not in out:
        out["maxItems"] = MAX_ITEMS
    return out


def call_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """Schema of one call ``{"name", "arguments"}`` over the allowed tools, name first."""
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t.name},
                "arguments": bound_schema(t.parameters or {"type": "object"}),
            },
            "required": ["name", "arguments"],
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def text_format_schema(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format") or {}
    kind = fmt.get("type")
    if kind == "json_schema":
        return bound_schema(fmt.get("schema") or {"type": "object"})
    if kind == "json_object":
        return {"type": "object"}
    return None


def detect_family(engine: Any, setting: str) -> str:
    if setting != "auto":
        return setting
    arch = getattr(engine, "architecture", "")
    template = getattr(engine, "chat_template", None) or ""
    if arch == "gpt-oss" or "<|channel|>" in template:
        return "harmony"
    return "template"


class TemplatePrompter:
    """GGUF chat template (or the architecture's fallback) + our tool convention."""

    family = "template"

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.template = templates.template_for(engine.architecture, engine.chat_template)
        templates.compile_template(self.template.source)  # syntax errors surface at load
        if self.template.origin != "gguf":
            log.info("%s has no chat template; using %s", engine.name, self.template.origin)
        stops = {engine.token_id(m) for m in templates.STOP_MARKERS}
        self.stop_ids = tuple(sorted(t for t in stops if t is not None))

    def plan(
        self,
        turns: Sequence[Turn],
        *,
        instructions: str | None,
        tool_mode: ToolMode,
        effort: str,
        text: dict[str, Any] | None,
    ) -> PromptPlan:
        offered = tool_mode.offered
        required = tool_mode.mode == "required"
        system = "\n\n".join(
            p
            for p in (
                instructions or "",
                templates.tool_instructions(offered, required) if offered else "",
            )
            if p
        )
        messages = templates.turns_to_messages(turns, system, self.template.merges_system)
        rendered = templates.render(
            self.template, messages, self.engine.bos_token, self.engine.eos_token
        )
        tokens = self.engine.tokenize(rendered, special=True)
        bos = self.engine.llm.token_bos() if self.engine.add_bos else -1
        if bos >= 0 and (not tokens or tokens[0] != bos):
            tokens.insert(0, bos)
        if required:
            return PromptPlan(tokens, self.stop_ids, JsonCallParser, call_schema(offered))
        schema = text_format_schema(text)
        if schema is not None:
            return PromptPlan(tokens, self.stop_ids, TextParser, schema)
        if offered:
            return PromptPlan(tokens, self.stop_ids, lambda: ToolTagParser(offered))
        return PromptPlan(tokens, self.stop_ids, TextParser)


class HarmonyPrompter:
    """gpt-oss: render with openai-harmony, parse channels incrementally."""

    family = "harmony"

    def __init__(self, engine: Any, data_dir: Path) -> None:
        from egemma.engines import harmony

        self._h = harmony
        self.engine = engine
        self.encoding = harmony.load_encoding(harmony.ensure_harmony_vocab(data_dir))
        self.stop_ids = tuple(harmony.stop_token_ids(self.encoding))

    def _encode(self, text: str) -> list[int]:
        return list(self.encoding.encode(text, allowed_special="all"))

    def plan(
        self,
        turns: Sequence[Turn],
        *,
        instructions: str | None,
        tool_mode: ToolMode,
        effort: str,
        text: dict[str, Any] | None,
    ) -> PromptPlan:
        offered = tool_mode.offered
        tokens = self._h.render_prompt(
            turns, offered, instructions=instructions, effort=effort, encoding=self.encoding
        )
        schema: dict[str, Any] | None = None
        prefill: list[int] = []
        if tool_mode.mode == "required" and len(offered) == 1:
            # Open the call ourselves, then constrain its arguments to the tool's parameters.
            tool = offered[0]
            prefill = self._encode(
                f"<|channel|>commentary to=functions.{tool.name} <|constrain|>json<|message|>"
            )
            schema = bound_schema(tool.parameters or {"type": "object"})
        elif tool_mode.mode == "required":
            prefill = self._encode("<|channel|>commentary to=functions.")
        else:
            schema = text_format_schema(text)
            if schema is not None:
                prefill = self._encode("<|channel|>final<|message|>")
        encoding = self.encoding

        def parser() -> OutputParser:
            made: OutputParser = self._h.HarmonyOutputParser(encoding)
            return made

        return PromptPlan(
            tokens + prefill, self.stop_ids, parser, schema, prefill=prefill, family="harmony"
        )


Prompter = TemplatePrompter | HarmonyPrompter


def prompter_for(engine: Any, family_setting: str, data_dir: Path) -> Prompter:
    """One prompter per engine, cached on it (templates compile once)."""
    cached = getattr(engine, "_egemma_prompter", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    family = detect_family(engine, family_setting)
    prompter: Prompter = (
        HarmonyPrompter(engine, data_dir) if family == "harmony" else TemplatePrompter(engine)
    )
    engine._egemma_prompter = prompter
    return prompter
