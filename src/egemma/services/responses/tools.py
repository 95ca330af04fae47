"""Request tools → ``ToolSpec``s and ``tool_choice`` → ``ToolMode``, with the bounds that keep
hostile schemas out of the grammar compiler (a 400, never a 500 or a runaway compile)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import anyio

from egemma.engines.base import ChatEngine, GrammarError
from egemma.errors import InvalidRequestError
from egemma.services.prompting.grammar_ir import Grammar
from egemma.services.prompting.grammar_ir import GrammarError as UnconvertibleGrammarError
from egemma.services.prompting.lark_grammar import lark_to_grammar
from egemma.services.prompting.plan import PromptPlan
from egemma.services.prompting.regex_grammar import regex_to_node
from egemma.services.prompting.schema_checks import check_grammar_size, validate_schema
from egemma.services.prompting.types import ToolMode, ToolSpec

TEXT_FORMATS = ("text", "json_schema", "json_object")
MAX_TOOLS = 128
MAX_TOOLS_JSON_BYTES = 256 * 1024
MAX_SCHEMA_DEPTH = 32
# Regex and enum caps: grammar compilers recurse on patterns (llama.cpp #25283, #19008).
MAX_PATTERN_CHARS = 1024
MAX_ENUM_VALUES = 1024


# Tool types the server cannot run (OpenAI-hosted, or needing a connection it does not make):
# accepted, not offered to the model, and reported (``X-Ignored-Tools``, a log warning).
# Only a ``tool_choice`` that forces one of them is refused.
HOSTED_CHOICES = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "web_search_2025_08_26",
        "file_search",
        "code_interpreter",
        "image_generation",
        "computer",
        "computer_use",
        "computer_use_preview",
        "tool_search",
        "mcp",
        "local_shell",
        "shell",
        "apply_patch",
    }
)


@dataclass
class ToolSet:
    """The request's tools: what the model is offered (``specs``), the served tools as the
    response echoes them (``echo``), and the tools set aside (``ignored``, by type)."""

    specs: list[ToolSpec]
    echo: list[dict[str, Any]]
    ignored: list[str]

    def add(self, specs: list[ToolSpec], original: dict[str, Any] | None, where: str) -> None:
        names = {s.name for s in self.specs}
        for spec in specs:
            if spec.name in names:
                raise InvalidRequestError(
                    f"Duplicate tool name '{spec.name}'.", param=f"{where}.name"
                )
            names.add(spec.name)
        self.specs.extend(specs)
        self.echo.append(original if original is not None else tool_echo(specs[0]))


def tool_echo(spec: ToolSpec) -> dict[str, Any]:
    """A served tool as ``response.tools`` shows it."""
    if spec.kind == "custom":
        fmt: dict[str, Any] = {"type": "text"}
        if spec.grammar is not None and spec.format is not None:
            fmt = dict(spec.format)
        return {
            "type": "custom",
            "name": spec.wire_name,
            "description": spec.description,
            "format": fmt,
        }
    return {
        "type": "function",
        "name": spec.wire_name,
        "description": spec.description,
        "parameters": spec.parameters,
        "strict": spec.strict,
    }


def custom_tool(tool: dict[str, Any], where: str, namespace: str | None) -> ToolSpec:
    """``{"type": "custom", name, description, format}``: free text, or text constrained by a
    Lark or regex grammar (converted to GBNF here, so a grammar that cannot be converted is
    a 400 before anything runs, never a silently dropped constraint)."""
    name = _checked_name(tool.get("name"), f"{where}.name")
    description = tool.get("description")
    fmt = tool.get("format")
    grammar: Grammar | None = None
    if isinstance(fmt, dict) and fmt.get("type") == "grammar":
        grammar = _grammar(fmt, f"{where}.format")
    elif fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise InvalidRequestError(
            "A custom tool's format must be {'type': 'text'} or a grammar.",
            param=f"{where}.format",
        )
    return ToolSpec(
        name=f"{namespace}.{name}" if namespace else name,
        description=description if isinstance(description, str) else None,
        kind="custom",
        namespace=namespace,
        local_name=name if namespace else None,
        grammar=grammar.to_gbnf() if grammar is not None else None,
        check=grammar.matches if grammar is not None else None,
        format=fmt if grammar is not None else None,
    )


def _grammar(fmt: dict[str, Any], param: str) -> Grammar:
    syntax, definition = fmt.get("syntax"), fmt.get("definition")
    if not isinstance(definition, str) or not definition.strip():
        raise InvalidRequestError(
            "A grammar format needs a definition.", param=f"{param}.definition"
        )
    try:
        if syntax == "lark":
            return lark_to_grammar(definition)
        if syntax == "regex":
            if len(definition) > MAX_PATTERN_CHARS:
                raise UnconvertibleGrammarError(
                    f"the pattern is longer than {MAX_PATTERN_CHARS} characters"
                )
            return Grammar({"start": regex_to_node(definition)}, "start").validate()
    except UnconvertibleGrammarError as exc:
        raise InvalidRequestError(
            f"The {syntax} grammar cannot be used to constrain decoding: {exc}.",
            param=f"{param}.definition",
            code="unsupported_grammar",
        ) from None
    raise InvalidRequestError(
        "A grammar's syntax must be 'lark' or 'regex'.", param=f"{param}.syntax"
    )


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
    keys = [key for _, key in plan.grammar_parts]
    key = plan.grammar_key()
    if key is not None:
        keys.append(key)
    for key in keys:
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
    return accept_tools(tools, param=param).specs


def accept_tools(tools: list[Any] | None, *, param: str = "tools") -> ToolSet:
    """Every tool a client may send: functions and custom tools are served, ``namespace``
    tools are expanded into their functions, hosted tools are set aside and reported."""
    result = ToolSet([], [], [])
    if not tools:
        return result
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
    for i, tool in enumerate(tools):
        where = f"{param}[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequestError(f"{where} must be an object.", param=where)
        kind = tool.get("type", "function")
        if kind == "function":
            result.add([_function(tool, where, None)], None, where)
        elif kind == "custom":
            result.add([custom_tool(tool, where, None)], None, where)
        elif kind == "namespace":
            result.add(_namespace(tool, where), tool, where)
        else:
            result.ignored.append(_hosted_label(tool, kind))
    if len(result.specs) > MAX_TOOLS:
        raise InvalidRequestError(
            f"At most {MAX_TOOLS} tools are allowed, namespaces included.",
            param=param,
            code="too_many_tools",
        )
    # tool_choice "required" builds one grammar over every tool: bound them together too.
    check_grammar_size([s.parameters for s in result.specs if s.parameters], param=param)
    return result


def _hosted_label(tool: dict[str, Any], kind: Any) -> str:
    label = str(kind)
    if kind == "mcp" and isinstance(tool.get("server_label"), str):
        label = f"mcp:{tool['server_label']}"
    return label


def _function(tool: dict[str, Any], where: str, namespace: str | None) -> ToolSpec:
    nested = tool.get("function")
    fn: dict[str, Any] = nested if isinstance(nested, dict) else tool
    name = _checked_name(fn.get("name"), f"{where}.name")
    description = fn.get("description")
    return ToolSpec(
        name=f"{namespace}.{name}" if namespace else name,
        description=description if isinstance(description, str) else None,
        parameters=check_schema(fn.get("parameters"), param=f"{where}.parameters"),
        strict=bool(fn.get("strict", False)),
        namespace=namespace,
        local_name=name if namespace else None,
    )


def _namespace(tool: dict[str, Any], where: str) -> list[ToolSpec]:
    namespace = _checked_name(tool.get("name"), f"{where}.name")
    members = tool.get("tools")
    if not isinstance(members, list) or not members:
        raise InvalidRequestError(
            f"{where}.tools must be a non-empty list of function or custom tools.",
            param=f"{where}.tools",
        )
    specs = []
    for j, member in enumerate(members):
        here = f"{where}.tools[{j}]"
        if not isinstance(member, dict) or member.get("type", "function") not in (
            "function",
            "custom",
        ):
            raise InvalidRequestError(
                f"{here} must be a function or custom tool.", param=f"{here}.type"
            )
        if member.get("type") == "custom":
            specs.append(custom_tool(member, here, namespace))
        else:
            specs.append(_function(member, here, namespace))
    return specs


def _checked_name(name: Any, param: str) -> str:
    if not isinstance(name, str) or not _valid_name(name):
        raise InvalidRequestError(
            "Tool names must be 1-64 characters of letters, digits, '_' or '-'.", param=param
        )
    return name


def parse_tool_choice(
    choice: Any, tools: list[ToolSpec], *, param: str = "tool_choice"
) -> ToolMode:
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
        if kind in ("function", "custom"):
            return ToolMode("required", (_named(choice, tools, param),))
        if kind == "allowed_tools":
            return _allowed_tools(choice, tools, param)
        if kind in HOSTED_CHOICES:
            raise InvalidRequestError(
                f"tool_choice forces the '{kind}' tool, which this server cannot run; "
                "only function and custom tools are served.",
                param=f"{param}.type",
                code="unsupported_tool_choice",
            )
    raise InvalidRequestError(
        "tool_choice must be none, auto, required, a function, a custom tool or allowed_tools.",
        param=param,
    )


def _find(ref: dict[str, Any], tools: list[ToolSpec]) -> ToolSpec | None:
    """The tool a ``{"type", "name", "namespace"?}`` reference names (a namespaced tool may
    be named without its namespace when that is unambiguous)."""
    nested = ref.get("function")
    fn: dict[str, Any] = nested if isinstance(nested, dict) else ref
    name, namespace = fn.get("name"), fn.get("namespace") or ref.get("namespace")
    kind = ref.get("type", "function")
    if not isinstance(name, str):
        return None
    wanted = f"{namespace}.{name}" if isinstance(namespace, str) else name
    exact = [t for t in tools if t.name == wanted and t.kind == kind]
    if exact:
        return exact[0]
    loose = [t for t in tools if t.wire_name == name and t.kind == kind and namespace is None]
    return loose[0] if len(loose) == 1 else None


def _named(choice: dict[str, Any], tools: list[ToolSpec], param: str) -> ToolSpec:
    found = _find(choice, tools)
    if found is None:
        nested = choice.get("function")
        name = (nested if isinstance(nested, dict) else choice).get("name")
        raise InvalidRequestError(
            f"tool_choice names {choice.get('type', 'function')} '{name}', which is not "
            "among the tools.",
            param=f"{param}.name",
        )
    return found


def _allowed_tools(choice: dict[str, Any], tools: list[ToolSpec], param: str) -> ToolMode:
    allowed = []
    for j, ref in enumerate(choice.get("tools") or []):
        if isinstance(ref, dict) and ref.get("type") in HOSTED_CHOICES:
            continue  # set aside like the tool itself
        found = _find(ref, tools) if isinstance(ref, dict) else None
        if found is None:
            name = ref.get("name") if isinstance(ref, dict) else None
            raise InvalidRequestError(
                f"allowed_tools names '{name}', which is not among the tools.",
                param=f"{param}.tools[{j}]",
            )
        allowed.append(found)
    mode = choice.get("mode", "auto")
    if mode not in ("auto", "required") or not allowed:
        raise InvalidRequestError("Invalid allowed_tools choice.", param=param)
    return ToolMode(mode, tuple(allowed))


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
