"""Responses input items → official item dicts with ids and status.

Clients send input in many shapes (``responses-protocol.md`` §3 and §10): a bare string, messages
without ``type``, replayed assistant output with ``logprobs: null`` / ``status: null``, reasoning
with only a summary, only content or only ``encrypted_content``, function-call outputs as a string
or a list of parts, and item references. Everything downstream (the prompt renderer, the store,
``input_items`` and conversation listings) sees one shape: the official output item types with an
``id`` and a ``status``. ``item_reference`` items are kept as ``{"type", "id"}`` for the caller to
resolve (``resolve_references``).

Malformed items raise ``InvalidRequestError`` whose ``param`` names the field, e.g.
``input[2].content``. Hosted-tool items (web search, computer use, MCP, shell, …) are refused by
type: only function and custom tools are served.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from egemma.errors import InvalidRequestError, NotFoundError
from egemma.ids import new_id

Item = dict[str, Any]

ROLES = frozenset({"user", "assistant", "system", "developer"})
STATUSES = frozenset({"in_progress", "completed", "incomplete"})

# Item types in openai-python's ``ResponseInputItemParam`` union that belong to hosted tools.
HOSTED_TYPES = frozenset(
    {
        "file_search_call",
        "web_search_call",
        "computer_call",
        "computer_call_output",
        "image_generation_call",
        "code_interpreter_call",
        "local_shell_call",
        "local_shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_call",
        "tool_search_call",
        "tool_search_output",
        "additional_tools",
        "program",
        "program_output",
        "compaction",
        "compaction_trigger",
        "configuration_update",
    }
)

_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def normalize_input(value: str | list[Any], *, param: str = "input") -> list[Item]:
    """Convert a Responses ``input`` (string or item list) into official item dicts."""
    if isinstance(value, str):
        return [_message("user", [_input_text(value)], None, None, None)]
    if not isinstance(value, list):
        raise InvalidRequestError(f"{param} must be a string or a list of items.", param=param)
    items = [normalize_item(raw, param=f"{param}[{i}]") for i, raw in enumerate(value)]
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item["type"] == "item_reference":
            continue
        if item["id"] in seen:
            raise InvalidRequestError(
                f"Duplicate item found with id {item['id']}. Remove duplicate items from your "
                "input and try again.",
                param=f"{param}[{i}].id",
            )
        seen.add(item["id"])
    return items


def normalize_item(raw: Any, *, param: str) -> Item:
    """One input item → an official item dict (or an ``item_reference`` left to resolve)."""
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"{param} must be an object.", param=param)
    kind = raw.get("type")
    if kind is None:
        if "role" in raw:
            kind = "message"
        elif "id" in raw:
            kind = "item_reference"
        else:
            raise InvalidRequestError(
                f"{param} has no 'type' and no 'role'; cannot tell what item it is.",
                param=f"{param}.type",
            )
    if not isinstance(kind, str):
        raise InvalidRequestError(f"{param}.type must be a string.", param=f"{param}.type")
    handler = _HANDLERS.get(kind)
    if handler is not None:
        return handler(raw, param)
    if kind in HOSTED_TYPES or kind.startswith("mcp_"):
        raise InvalidRequestError(
            f"Item type '{kind}' is not supported: only function and custom tools are served.",
            param=f"{param}.type",
            code="unsupported_item_type",
        )
    raise InvalidRequestError(f"Unknown item type '{kind}'.", param=f"{param}.type")


async def resolve_references(
    items: list[Item], find: Callable[[str], Awaitable[Item | None]], *, param: str = "input"
) -> list[Item]:
    """Replace every ``item_reference`` by the stored item it names (404 when unknown)."""
    out: list[Item] = []
    for i, item in enumerate(items):
        if item.get("type") != "item_reference":
            out.append(item)
            continue
        found = await find(item["id"])
        if found is None:
            raise NotFoundError(f"Item with id '{item['id']}' not found.", param=f"{param}[{i}].id")
        out.append(found)
    return out


# ---------------------------------------------------------------------------------------------
# Item types
# ---------------------------------------------------------------------------------------------


def _message_item(raw: Item, param: str) -> Item:
    role = raw.get("role")
    if role not in ROLES:
        raise InvalidRequestError(
            f"{param}.role must be one of user, assistant, system, developer; got {role!r}.",
            param=f"{param}.role",
        )
    content = raw.get("content")
    if isinstance(content, str):
        parts = [_output_text(content, None, None) if role == "assistant" else _input_text(content)]
    elif isinstance(content, list):
        parts = [_part(role, p, f"{param}.content[{j}]") for j, p in enumerate(content)]
    else:
        raise InvalidRequestError(
            f"{param}.content must be a string or a list of content parts.",
            param=f"{param}.content",
        )
    phase = raw.get("phase") if role == "assistant" else None
    return _message(role, parts, _opt_id(raw, param), _status(raw, param), phase)


MAX_ARGUMENTS_DEPTH = 64
_OPENERS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]')


def _check_nesting(arguments: str, param: str) -> None:
    """Arguments are kept as the client sent them (even invalid JSON), but templates parse them:
    nesting deeper than ``MAX_ARGUMENTS_DEPTH`` is a 400 here, not a RecursionError later."""
    if arguments.count("[") + arguments.count("{") <= MAX_ARGUMENTS_DEPTH:
        return
    depth = 0
    for match in _OPENERS.finditer(arguments):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_ARGUMENTS_DEPTH:
                raise InvalidRequestError(
                    f"Arguments are nested deeper than {MAX_ARGUMENTS_DEPTH} levels.",
                    param=param,
                    code="arguments_too_deep",
                )
        elif token in "]}":
            depth -= 1


def _function_call(raw: Item, param: str) -> Item:
    arguments = raw.get("arguments")
    if isinstance(arguments, dict):  # sloppy clients send the object; the wire wants a string
        arguments = json.dumps(arguments, ensure_ascii=False)
    if not isinstance(arguments, str):
        raise InvalidRequestError(
            f"{param}.arguments must be a JSON string.", param=f"{param}.arguments"
        )
    _check_nesting(arguments, f"{param}.arguments")
    item: Item = {
        "id": _opt_id(raw, param) or new_id("fc"),
        "type": "function_call",
        "call_id": _required_str(raw, "call_id", param),
        "name": _required_str(raw, "name", param),
        "arguments": arguments,
        "status": _status(raw, param),
    }
    return _with_namespace(item, raw, param)


def _with_namespace(item: Item, raw: Item, param: str) -> Item:
    """Keep the ``namespace`` of a call to a namespaced tool (Codex routes on it)."""
    namespace = raw.get("namespace")
    if namespace is not None:
        if not isinstance(namespace, str):
            raise InvalidRequestError(
                f"{param}.namespace must be a string.", param=f"{param}.namespace"
            )
        item["namespace"] = namespace
    return item


def _custom_tool_call(raw: Item, param: str) -> Item:
    item: Item = {
        "id": _opt_id(raw, param) or new_id("ctc"),
        "type": "custom_tool_call",
        "call_id": _required_str(raw, "call_id", param),
        "name": _required_str(raw, "name", param),
        "input": _required_str(raw, "input", param),
        "status": _status(raw, param),
    }
    return _with_namespace(item, raw, param)


def _custom_tool_call_output(raw: Item, param: str) -> Item:
    item = _function_call_output(raw, param)
    item["type"] = "custom_tool_call_output"
    if not raw.get("id"):
        item["id"] = new_id("ctco")
    return item


def _function_call_output(raw: Item, param: str) -> Item:
    output = raw.get("output")
    if isinstance(output, list):
        output = [_output_part(p, f"{param}.output[{j}]") for j, p in enumerate(output)]
    elif not isinstance(output, str):
        raise InvalidRequestError(
            f"{param}.output must be a string or a list of content parts.",
            param=f"{param}.output",
        )
    return {
        "id": _opt_id(raw, param) or new_id("fco"),
        "type": "function_call_output",
        "call_id": _required_str(raw, "call_id", param),
        "output": output,
        "status": _status(raw, param),
    }


def _reasoning(raw: Item, param: str) -> Item:
    item: Item = {"id": _opt_id(raw, param) or new_id("rs"), "type": "reasoning"}
    item["summary"] = _text_list(raw.get("summary"), "summary_text", f"{param}.summary")
    if raw.get("content") is not None:
        item["content"] = _text_list(raw["content"], "reasoning_text", f"{param}.content")
    encrypted = raw.get("encrypted_content")
    if encrypted is not None:
        if not isinstance(encrypted, str):
            raise InvalidRequestError(
                f"{param}.encrypted_content must be a string.", param=f"{param}.encrypted_content"
            )
        item["encrypted_content"] = encrypted
    item["status"] = _status(raw, param)
    return item


def _compaction(raw: Item, param: str) -> Item:
    """A ``compaction`` item from ``POST /v1/responses/compact``: its sealed summary is checked
    by sealing.py and expanded into the prompt by turns.py."""
    return {
        "id": _opt_id(raw, param) or new_id("cmp"),
        "type": "compaction",
        "encrypted_content": _required_str(raw, "encrypted_content", param),
    }


def _item_reference(raw: Item, param: str) -> Item:
    return {"type": "item_reference", "id": _required_str(raw, "id", param)}


_HANDLERS: dict[str, Callable[[Item, str], Item]] = {
    "message": _message_item,
    "function_call": _function_call,
    "function_call_output": _function_call_output,
    "custom_tool_call": _custom_tool_call,
    "custom_tool_call_output": _custom_tool_call_output,
    "reasoning": _reasoning,
    "compaction": _compaction,
    "item_reference": _item_reference,
}


# ---------------------------------------------------------------------------------------------
# Content parts
# ---------------------------------------------------------------------------------------------


def _part(role: str, raw: Any, param: str) -> Item:
    if isinstance(raw, str):  # a bare string in a part list: lenient, treat as text
        raw = {"type": "text", "text": raw}
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"{param} must be a content part object.", param=param)
    kind = raw.get("type")
    if kind in _TEXT_PARTS:
        text = _required_str(raw, "text", param)
        if role == "assistant":
            return _output_text(text, raw.get("annotations"), raw.get("logprobs"))
        return _input_text(text)
    if kind == "refusal" and role == "assistant":
        return {"type": "refusal", "refusal": _required_str(raw, "refusal", param)}
    if kind in ("input_image", "input_file") and role != "assistant":
        return _media_part(raw, param)
    raise InvalidRequestError(
        f"{param}.type {kind!r} is not a valid content part for a {role} message.",
        param=f"{param}.type",
    )


def _output_part(raw: Any, param: str) -> Item:
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"{param} must be a content part object.", param=param)
    kind = raw.get("type")
    if kind in _TEXT_PARTS:
        return _input_text(_required_str(raw, "text", param))
    if kind in ("input_image", "input_file"):
        return _media_part(raw, param)
    raise InvalidRequestError(
        f"{param}.type must be 'input_text', 'input_image' or 'input_file'; got {kind!r}.",
        param=f"{param}.type",
    )


def _media_part(raw: Item, param: str) -> Item:
    keys: tuple[str, ...]
    if raw["type"] == "input_image":
        part: Item = {"type": "input_image", "detail": raw.get("detail") or "auto"}
        keys = ("image_url", "file_id")
    else:
        part = {"type": "input_file"}
        keys = ("file_id", "file_data", "file_url", "filename")
    for key in keys:
        value = raw.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise InvalidRequestError(
                    f"{param}.{key} must be a string.", param=f"{param}.{key}"
                )
            part[key] = value
    if len(part) == (2 if raw["type"] == "input_image" else 1):
        raise InvalidRequestError(
            f"{param} needs one of {', '.join(keys)}.", param=f"{param}.{keys[0]}"
        )
    return part


def _text_list(value: Any, part_type: str, param: str) -> list[Item]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequestError(f"{param} must be a list.", param=param)
    out = []
    for j, raw in enumerate(value):
        if not isinstance(raw, dict) or raw.get("type", part_type) != part_type:
            raise InvalidRequestError(
                f"{param}[{j}] must be a {{'type': '{part_type}', 'text': ...}} part.",
                param=f"{param}[{j}]",
            )
        out.append({"type": part_type, "text": _required_str(raw, "text", f"{param}[{j}]")})
    return out


# ---------------------------------------------------------------------------------------------
# Small builders and checks
# ---------------------------------------------------------------------------------------------


def _message(
    role: str, content: list[Item], item_id: str | None, status: str | None, phase: Any
) -> Item:
    item: Item = {
        "id": item_id or new_id("msg"),
        "type": "message",
        "role": role,
        "status": status or "completed",
        "content": content,
    }
    if phase in ("commentary", "final_answer"):
        item["phase"] = phase
    return item


def _input_text(text: str) -> Item:
    return {"type": "input_text", "text": text}


def _output_text(text: str, annotations: Any, logprobs: Any) -> Item:
    return {
        "type": "output_text",
        "text": text,
        "annotations": annotations if isinstance(annotations, list) else [],
        "logprobs": logprobs if isinstance(logprobs, list) else [],
    }


def _opt_id(raw: Item, param: str) -> str | None:
    value = raw.get("id")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 256:
        raise InvalidRequestError(
            f"{param}.id must be a string of at most 256 characters.", param=f"{param}.id"
        )
    return value


def _status(raw: Item, param: str) -> str:
    value = raw.get("status")
    if value is None:
        return "completed"
    if value not in STATUSES:
        raise InvalidRequestError(
            f"{param}.status must be one of 'in_progress', 'completed', 'incomplete'.",
            param=f"{param}.status",
        )
    return str(value)


def _required_str(raw: Item, key: str, param: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        problem = "is required" if value is None else "must be a string"
        raise InvalidRequestError(f"{param}.{key} {problem}.", param=f"{param}.{key}")
    return value
