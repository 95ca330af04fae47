"""Official items (``services/items.py``) → neutral ``Turn``s, and request tools → ``ToolSpec``s.

This is the one place where wire items become what prompt formats render. Tool results find their
function name through the ``call_id`` of an earlier call; an unknown ``call_id`` is a 400 naming
the item (Harmony needs the name: ``functions.<name>`` is the author of a tool message).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from egemma.engines.base import ToolSpec, Turn
from egemma.errors import InvalidRequestError

Item = dict[str, Any]

MAX_TOOLS = 128
MAX_TOOLS_JSON_BYTES = 256 * 1024
MAX_SCHEMA_DEPTH = 32
# Regex and enum caps: grammar compilers recurse on patterns (llama.cpp #25283, #19008).
MAX_PATTERN_CHARS = 1024
MAX_ENUM_VALUES = 1024


def _text_of(parts: Any, *, param: str) -> str:
    if isinstance(parts, str):
        return parts
    texts: list[str] = []
    for j, part in enumerate(parts or []):
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            texts.append(str(part.get("text", "")))
        elif kind == "refusal":
            texts.append(str(part.get("refusal", "")))
        else:
            raise InvalidRequestError(
                f"Content part type '{kind}' is not supported by the local text models.",
                param=f"{param}[{j}].type",
                code="unsupported_content",
            )
    return "\n".join(t for t in texts if t)


def items_to_turns(items: list[Item], *, param: str = "input") -> list[Turn]:
    turns: list[Turn] = []
    call_names: dict[str, str] = {}
    for i, item in enumerate(items):
        where = f"{param}[{i}]"
        kind = item.get("type")
        if kind == "message":
            role = item["role"]
            text = _text_of(item.get("content"), param=f"{where}.content")
            turns.append(Turn(kind=role, text=text))
        elif kind == "function_call":
            call_names[item["call_id"]] = item["name"]
            turns.append(
                Turn(
                    kind="tool_call",
                    name=item["name"],
                    call_id=item["call_id"],
                    arguments=item.get("arguments") or "{}",
                )
            )
        elif kind == "function_call_output":
            call_id = item["call_id"]
            if call_id not in call_names:
                raise InvalidRequestError(
                    f"No function call found for call_id '{call_id}'.",
                    param=f"{where}.call_id",
                    code="unknown_call_id",
                )
            output = item.get("output")
            text = output if isinstance(output, str) else _text_of(output, param=f"{where}.output")
            turns.append(
                Turn(kind="tool_result", name=call_names[call_id], call_id=call_id, text=text)
            )
        elif kind == "reasoning":
            content = item.get("content") or item.get("summary") or []
            text = _text_of(content, param=f"{where}.content")
            if text:
                turns.append(Turn(kind="reasoning", text=text))
        else:
            raise InvalidRequestError(f"Item type '{kind}' cannot be used as input.", param=where)
    return turns


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, iteratively (a hostile schema cannot blow the stack)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


def _check_keywords(schema: dict[str, Any], param: str) -> None:
    """Bound ``pattern`` lengths and ``enum`` sizes anywhere in a schema, iteratively."""
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        pattern = node.get("pattern")
        if isinstance(pattern, str) and len(pattern) > MAX_PATTERN_CHARS:
            raise InvalidRequestError(
                f"A schema pattern is longer than {MAX_PATTERN_CHARS} characters.",
                param=param,
                code="schema_too_complex",
            )
        enum = node.get("enum")
        if isinstance(enum, list) and len(enum) > MAX_ENUM_VALUES:
            raise InvalidRequestError(
                f"A schema enum has more than {MAX_ENUM_VALUES} values.",
                param=param,
                code="schema_too_complex",
            )
        stack.extend(node.values())


def check_schema(schema: Any, *, param: str) -> dict[str, Any]:
    if schema is None:
        return {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise InvalidRequestError("A JSON Schema must be an object.", param=param)
    if _depth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        raise InvalidRequestError(
            f"The schema is nested deeper than {MAX_SCHEMA_DEPTH} levels.",
            param=param,
            code="schema_too_deep",
        )
    _check_keywords(schema, param)
    if "$ref" in json.dumps(schema):
        raise InvalidRequestError(
            "Schemas with $ref are not supported.", param=param, code="unsupported_schema"
        )
    return {k: v for k, v in schema.items() if k not in ("$schema", "title")}


def check_text_format(text: dict[str, Any] | None) -> None:
    """``text.format`` json_schema gets the same bounds as tool parameters (400, not a 500 in
    the grammar compiler)."""
    fmt = (text or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and "schema" in fmt:
        check_schema(fmt["schema"], param="text.format.schema")


def parse_tools(tools: list[Any] | None, *, param: str = "tools") -> list[ToolSpec]:
    if not tools:
        return []
    if len(tools) > MAX_TOOLS:
        raise InvalidRequestError(
            f"At most {MAX_TOOLS} tools are allowed.", param=param, code="too_many_tools"
        )
    if len(json.dumps(tools)) > MAX_TOOLS_JSON_BYTES:
        raise InvalidRequestError(
            f"Tool definitions exceed {MAX_TOOLS_JSON_BYTES} bytes.",
            param=param,
            code="tools_too_large",
        )
    specs: list[ToolSpec] = []
    names: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"{param}[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequestError(f"{where} must be an object.", param=where)
        kind = tool.get("type", "function")
        if kind != "function":
            raise InvalidRequestError(
                f"Tool type '{kind}' is not supported: only function tools are served.",
                param=f"{where}.type",
                code="unsupported_tool_type",
            )
        nested = tool.get("function")
        fn: dict[str, Any] = nested if isinstance(nested, dict) else tool
        name = fn.get("name")
        if not isinstance(name, str) or not _valid_name(name):
            raise InvalidRequestError(
                "Function names must be 1-64 characters of letters, digits, '_' or '-'.",
                param=f"{where}.name",
            )
        if name in names:
            raise InvalidRequestError(f"Duplicate tool name '{name}'.", param=f"{where}.name")
        names.add(name)
        description = fn.get("description")
        specs.append(
            ToolSpec(
                name=name,
                description=description if isinstance(description, str) else None,
                parameters=check_schema(fn.get("parameters"), param=f"{where}.parameters"),
                strict=bool(fn.get("strict", False)),
            )
        )
    return specs


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)


@dataclass(frozen=True)
class ToolMode:
    """What the request allows: ``none``, ``auto`` or ``required`` over ``tools``."""

    mode: str
    tools: tuple[ToolSpec, ...]

    @property
    def offered(self) -> tuple[ToolSpec, ...]:
        return () if self.mode == "none" else self.tools


def parse_tool_choice(
    choice: Any, tools: list[ToolSpec], *, param: str = "tool_choice"
) -> ToolMode:
    by_name = {t.name: t for t in tools}
    if choice is None or choice == "auto":
        return ToolMode("auto" if tools else "none", tuple(tools))
    if choice == "none":
        return ToolMode("none", tuple(tools))
    if choice == "required":
        if not tools:
            raise InvalidRequestError("tool_choice 'required' needs tools.", param=param)
        return ToolMode("required", tuple(tools))
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function":
            nested = choice.get("function")
            fn: dict[str, Any] = nested if isinstance(nested, dict) else choice
            name = fn.get("name")
            if name not in by_name:
                raise InvalidRequestError(
                    f"tool_choice names '{name}', which is not among the tools.",
                    param=f"{param}.name",
                )
            return ToolMode("required", (by_name[name],))
        if kind == "allowed_tools":
            allowed = []
            for j, ref in enumerate(choice.get("tools") or []):
                name = ref.get("name") if isinstance(ref, dict) else None
                if name not in by_name:
                    raise InvalidRequestError(
                        f"allowed_tools names '{name}', which is not among the tools.",
                        param=f"{param}.tools[{j}]",
                    )
                allowed.append(by_name[name])
            mode = choice.get("mode", "auto")
            if mode not in ("auto", "required") or not allowed:
                raise InvalidRequestError("Invalid allowed_tools choice.", param=param)
            return ToolMode(mode, tuple(allowed))
    raise InvalidRequestError(
        "tool_choice must be none, auto, required, a function or allowed_tools.", param=param
    )
