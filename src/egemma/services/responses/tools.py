"""Request tools → ``ToolSpec``s and ``tool_choice`` → ``ToolMode``, with the bounds that keep
hostile schemas out of the grammar compiler (a 400, never a 500 or a runaway compile)."""

from __future__ import annotations

import json
from typing import Any

import anyio

from egemma.engines.base import ChatEngine, GrammarError
from egemma.errors import InvalidRequestError
from egemma.services.prompting.plan import PromptPlan
from egemma.services.prompting.schema_checks import check_grammar_size, validate_schema
from egemma.services.prompting.types import ToolMode, ToolSpec

TEXT_FORMATS = ("text", "json_schema", "json_object")
MAX_TOOLS = 128
MAX_TOOLS_JSON_BYTES = 256 * 1024
MAX_SCHEMA_DEPTH = 32
# Regex and enum caps: grammar compilers recurse on patterns (llama.cpp #25283, #19008).
MAX_PATTERN_CHARS = 1024
MAX_ENUM_VALUES = 1024


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
    validate_schema(schema, param=param)
    check_grammar_size(schema, param=param)
    return {k: v for k, v in schema.items() if k not in ("$schema", "title")}


async def check_grammar(engine: ChatEngine, plan: PromptPlan) -> None:
    """The engine builds the plan's grammar before admission: what it cannot is a 400 here,
    not a failed generation later."""
    key = plan.grammar_key()
    if key is None:
        return
    try:
        await anyio.to_thread.run_sync(engine.check_grammar, key)
    except GrammarError as exc:
        raise InvalidRequestError(str(exc), code="unsupported_schema") from None


def check_text_format(text: dict[str, Any] | None) -> None:
    """``text.format`` json_schema gets the same bounds as tool parameters (400, not a 500 in
    the grammar compiler)."""
    fmt = (text or {}).get("format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in TEXT_FORMATS:
        raise InvalidRequestError(
            f"text.format.type must be one of {', '.join(TEXT_FORMATS)}, not {kind!r}.",
            param="text.format.type",
        )
    if kind == "json_schema" and "schema" in fmt:
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
    # tool_choice "required" builds one grammar over every tool: bound them together too.
    check_grammar_size([s.parameters for s in specs], param=param)
    return specs


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)


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
            return _allowed_tools(choice, by_name, param)
    raise InvalidRequestError(
        "tool_choice must be none, auto, required, a function or allowed_tools.", param=param
    )


def _allowed_tools(choice: dict[str, Any], by_name: dict[str, ToolSpec], param: str) -> ToolMode:
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
