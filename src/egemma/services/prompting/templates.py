"""GGUF chat templates, rendered only in a sandbox, and our tool-call convention for them.

GGUF chat templates are code written by whoever made the file: they are rendered only in
``jinja2.sandbox.ImmutableSandboxedEnvironment`` (CVE-2024-34359 hit llama-cpp-python's plain
``Environment``; SGLang's CVE-2026-5760 was the same class). A GGUF with no template gets its
family's turn format chosen by architecture, never llama.cpp's silent ``llama-2`` fallback.

Tool-call convention for models without native tool tokens (documented in the README): the tools are
described in the system message, and a call is written as
``<tool_call>{"name": "...", "arguments": {...}}</tool_call>``; a tool's result comes back in a user
turn as ``<tool_response name="...">…</tool_response>``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from egemma.errors import InvalidRequestError
from egemma.services.prompting.types import ToolSpec, Turn

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

# Gemma's turn format (no system role: system text leads the first user turn).
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "<start_of_turn>{{ 'model' if m.role == 'assistant' else 'user' }}\n"
    "{{ m.content | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# ChatML, for any other architecture that ships no template.
CHATML_TEMPLATE = (
    "{% for m in messages %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

FALLBACKS = {"gemma": GEMMA_TEMPLATE, "gemma2": GEMMA_TEMPLATE, "gemma3": GEMMA_TEMPLATE}
TURN_END_MARKERS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>")
# A model that starts a new turn has ended its own (the pretrained Gemma does this).
STOP_MARKERS = (*TURN_END_MARKERS, "<start_of_turn>", "<|im_start|>")


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    origin: str  # "gguf" or "fallback:<family>"
    merges_system: bool  # the format has no system role


def _raise(message: str) -> None:
    raise TemplateError(message)


@lru_cache(maxsize=16)
def compile_template(source: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(source)


def template_for(architecture: str, embedded: str | None) -> ChatTemplate:
    if embedded:
        return ChatTemplate(embedded, "gguf", merges_system=False)
    if architecture in FALLBACKS:
        return ChatTemplate(FALLBACKS[architecture], f"fallback:{architecture}", True)
    return ChatTemplate(CHATML_TEMPLATE, "fallback:chatml", merges_system=False)


def _describe(tool: ToolSpec) -> str:
    described: dict[str, Any]
    if tool.kind == "custom":
        described = {"name": tool.name, "description": tool.description or "", "input": "text"}
    else:
        described = {
            "name": tool.name,
            "description": tool.description or "",
            "parameters": tool.parameters,
        }
    return json.dumps(described, ensure_ascii=False)


def tool_instructions(tools: Sequence[ToolSpec], required: bool) -> str:
    if required and len(tools) == 1 and tools[0].kind == "custom":
        tool = tools[0]
        return "\n".join(
            (
                f"Answer only with the input for the {tool.name} tool, nothing else.",
                f"About {tool.name}: {tool.description or ''}".rstrip(),
            )
        )
    lines = [
        "You can call these functions:",
        *(_describe(t) for t in tools),
        "To call a function, answer with exactly "
        + TOOL_CALL_OPEN
        + '{"name": <function name>, "arguments": <JSON object>}'
        + TOOL_CALL_CLOSE
        + ".",
    ]
    if any(t.kind == "custom" for t in tools):
        lines.append(
            'A function whose "input" is "text" takes free-form text instead: answer with '
            + TOOL_CALL_OPEN
            + '{"name": <function name>, "input": <the text as a JSON string>}'
            + TOOL_CALL_CLOSE
            + "."
        )
    if not required:
        lines.append("If no function is needed, answer the user directly.")
    return "\n".join(lines)


def turns_to_messages(
    turns: Sequence[Turn], system: str, merges_system: bool
) -> list[dict[str, str]]:
    """Neutral turns → ``[{role, content}]`` for a chat template, with our tool convention."""
    messages: list[dict[str, str]] = []
    system_parts = [system] if system else []
    for turn in turns:
        if turn.kind in ("system", "developer"):
            system_parts.append(turn.text)
            continue
        if turn.kind == "reasoning":
            continue  # earlier chain of thought is not replayed to template models
        if turn.kind == "tool_call":
            role, text = "assistant", _call_text(turn)
        elif turn.kind == "tool_result":
            role, text = (
                "user",
                f'<tool_response name="{turn.name}">\n{turn.text}\n</tool_response>',
            )
        else:
            role, text = turn.kind, turn.text
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n" + text
        else:
            messages.append({"role": role, "content": text})
    system_text = "\n\n".join(p for p in system_parts if p)
    if system_text:
        if merges_system:
            if messages and messages[0]["role"] == "user":
                messages[0]["content"] = f"{system_text}\n\n{messages[0]['content']}"
            else:
                messages.insert(0, {"role": "user", "content": system_text})
        else:
            messages.insert(0, {"role": "system", "content": system_text})
    return messages


def _call_text(turn: Turn) -> str:
    call: dict[str, Any] = {"name": turn.name}
    if turn.custom:
        call["input"] = turn.text
    else:
        call["arguments"] = _json_or_text(turn.arguments or "{}")
    return f"{TOOL_CALL_OPEN}{json.dumps(call, ensure_ascii=False)}{TOOL_CALL_CLOSE}"


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value


def render(
    template: ChatTemplate, messages: list[dict[str, str]], bos_token: str, eos_token: str
) -> str:
    try:
        return str(
            compile_template(template.source).render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=bos_token,
                eos_token=eos_token,
            )
        )
    except (TemplateError, OverflowError, TypeError, ValueError, LookupError) as exc:
        # SecurityError is a TemplateError: a template that reaches for internals is refused;
        # the sandbox's range() limit raises OverflowError.
        raise InvalidRequestError(
            f"The model's chat template could not render this conversation: {exc}",
            code="template_error",
        ) from None
