"""The JSON Schemas that constrain decoding: one tool call, a tool's arguments, ``text.format``.

Bounds keep grammar-constrained strings and arrays from running on to the token cap (a measured
failure mode of small models: models-on-this-machine.md §4). They apply to the grammar only:
calls are still validated against the tool's own schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from egemma.services.prompting.types import ToolSpec

MAX_STRING = 512
MAX_ITEMS = 64


def bound_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``schema`` with string lengths and array sizes bounded where the user set none.
    Numbers are already bounded to 16 digits by llama.cpp's converter."""
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
    if isinstance(out.get("pattern"), str):
        out["pattern"] = anchored(out["pattern"])
    if out.get("type") == "string" and "maxLength" not in out and "enum" not in out:
        out["maxLength"] = MAX_STRING
    if out.get("type") == "array" and "maxItems" not in out:
        out["maxItems"] = MAX_ITEMS
    return out


def anchored(pattern: str) -> str:
    """A JSON Schema pattern matches anywhere in the string; llama.cpp's converter wants it
    anchored. ``^.*(p).*$`` accepts a subset of what ``p`` accepts, so every output the grammar
    allows still validates against the original pattern."""
    core = pattern
    start = core.startswith("^")
    if start:
        core = core[1:]
    end = core.endswith("$") and not core.endswith("\\$")
    if end:
        core = core[:-1]
    return ("^" if start else "^.*") + f"({core})" + ("$" if end else ".*$")


def call_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """Schema of one call ``{"name", "arguments"}`` over the allowed tools, name first."""
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t.name},
                # A custom tool's free-form input as a JSON string; its grammar, if any, is
                # checked on the decoded input (services/responses/service.py).
                "input": {"type": "string"},
            },
            "required": ["name", "input"],
        }
        if t.kind == "custom"
        else {
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
