"""The prompt formats and the one registry that picks and keeps a model's format.

Harmony for gpt-oss (rendered with openai-harmony, parsed by channel), the GGUF chat template for
everything else (rendered in a sandbox, with our ``<tool_call>`` convention). Constrained
decoding: ``tool_choice`` required/named makes the output a JSON call whose arguments match the
tool's ``parameters``; ``text.format`` json_schema/json_object makes the answer JSON that matches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from egemma.engines.base import ChatEngine
from egemma.services.prompting import harmony, templates
from egemma.services.prompting.harmony_grammar import GrammarFrame, HarmonyGrammar
from egemma.services.prompting.plan import Prompter, PromptPlan
from egemma.services.prompting.schemas import bound_schema, call_schema, text_format_schema
from egemma.services.prompting.segments import tokenize_rendered
from egemma.services.prompting.toolcalls import (
    JsonCallParser,
    RawInputParser,
    TextParser,
    ToolTagParser,
)
from egemma.services.prompting.types import OutputParser, ToolMode, Turn

log = logging.getLogger(__name__)


def detect_family(engine: ChatEngine, setting: str) -> str:
    if setting != "auto":
        return setting
    if engine.architecture == "gpt-oss" or "<|channel|>" in (engine.chat_template or ""):
        return "harmony"
    return "template"


class TemplatePrompter:
    """GGUF chat template (or the architecture's fallback) + our tool convention."""

    family = "template"

    def __init__(self, engine: ChatEngine) -> None:
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
        special = self.engine.special
        tokens = tokenize_rendered(
            partial(
                templates.render,
                self.template,
                bos_token=special.bos_text,
                eos_token=special.eos_text,
            ),
            messages,
            lambda text, parse_special: self.engine.tokenize(text, special=parse_special),
        )
        bos = special.bos_id if special.add_bos else -1
        if bos >= 0 and (not tokens or tokens[0] != bos):
            tokens.insert(0, bos)
        if required and len(offered) == 1 and offered[0].kind == "custom":
            # A forced custom tool: the whole answer is its input, under its grammar if any.
            name = offered[0].name
            return PromptPlan(
                tokens, self.stop_ids, lambda: RawInputParser(name), gbnf=offered[0].grammar
            )
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

    def __init__(self, models_root: Path) -> None:
        self.encoding = harmony.load_encoding(harmony.ensure_harmony_vocab(models_root))
        self.stop_ids = tuple(harmony.stop_token_ids(self.encoding))
        self.grammar = HarmonyGrammar(
            {t: self._encode(t)[0] for t in self.encoding.special_tokens_set}
        )

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
        tokens = harmony.render_prompt(
            turns, offered, instructions=instructions, effort=effort, encoding=self.encoding
        )
        schema: dict[str, Any] | None = None
        gbnf: str | None = None
        prefill: list[int] = []
        frame: GrammarFrame | None = None
        if tool_mode.mode == "required" and len(offered) == 1 and offered[0].kind == "custom":
            # Free-form input: the message body is the input itself, under its grammar if any.
            prefill = self._encode(
                f"<|channel|>commentary to=functions.{offered[0].name}<|message|>"
            )
            gbnf = offered[0].grammar
        elif tool_mode.mode == "required" and len(offered) == 1:
            # Open the call ourselves, then constrain its arguments to the tool's parameters.
            tool = offered[0]
            prefill = self._encode(
                f"<|channel|>commentary to=functions.{tool.name} <|constrain|>json<|message|>"
            )
            schema = bound_schema(tool.parameters or {"type": "object"})
        elif tool_mode.mode == "required":
            # Several tools: the grammar picks one of their names and constrains its input.
            prefill = self._encode("<|channel|>commentary to=functions.")
            frame = self.grammar.call_choice(offered)
        elif text_format_schema(text) is not None and not offered:
            schema = text_format_schema(text)
            prefill = self._encode("<|channel|>final<|message|>")
        else:
            # The whole turn: analysis, then a final answer (JSON if asked) or any offered call.
            frame = self.grammar.frame(offered, effort=effort, text=text)
        if schema is not None:
            # Through a frame too, so the engine keeps control tokens out of JSON strings.
            frame = GrammarFrame("root ::= part-0\n", (("part-0", json.dumps(schema)),))
            schema = None
        if frame is not None:
            gbnf = frame.gbnf
        encoding = self.encoding

        def parser() -> OutputParser:
            made: OutputParser = harmony.HarmonyOutputParser(encoding)
            return made

        return PromptPlan(
            tokens + prefill,
            self.stop_ids,
            parser,
            schema,
            prefill=prefill,
            family="harmony",
            gbnf=gbnf,
            grammar_parts=frame.parts if frame is not None else (),
        )


class PromptFormats:
    """One prompter per served model, built once: templates compile and the Harmony vocabulary
    loads when the model loads, so a broken one is a load error, not a 500 later."""

    def __init__(self, family_setting: str, models_root: Path) -> None:
        self.family_setting = family_setting
        self.models_root = models_root
        self._built: dict[int, tuple[ChatEngine, Prompter]] = {}

    def build(self, engine: ChatEngine) -> Prompter:
        """The engine's prompter, built now if it is new. Blocking; raises on a broken format."""
        found = self._built.get(id(engine))
        if found is not None and found[0] is engine:
            return found[1]
        prompter: Prompter
        if detect_family(engine, self.family_setting) == "harmony":
            prompter = HarmonyPrompter(self.models_root)
        else:
            prompter = TemplatePrompter(engine)
        self._built[id(engine)] = (engine, prompter)
        return prompter

    async def get(self, engine: ChatEngine) -> Prompter:
        """The engine's prompter; a first build runs in a worker thread."""
        found = self._built.get(id(engine))
        if found is not None and found[0] is engine:
            return found[1]
        return await anyio.to_thread.run_sync(self.build, engine)

    def forget(self, engine: ChatEngine) -> None:
        self._built.pop(id(engine), None)
