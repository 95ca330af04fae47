"""Official items (``items.py``) → neutral ``Turn``s: the one place where wire items become what
prompt formats render.

Tool results find their function name through the ``call_id`` of an earlier call; an unknown
``call_id`` is a 400 naming the item (Harmony needs the name: ``functions.<name>`` is the author
of a tool message).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from egemma.errors import InvalidRequestError
from egemma.services.prompting.types import Turn

Item = dict[str, Any]


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


# How an expanded ``compaction`` item reads to the model (compaction.py wrote the summary).
COMPACTION_PREFIX = "Summary of the earlier conversation:\n"
Unseal = Callable[[str, str], str]  # (encrypted_content, param) -> the compaction summary


def items_to_turns(
    items: list[Item], *, param: str = "input", unseal: Unseal | None = None
) -> list[Turn]:
    turns: list[Turn] = []
    call_names: dict[str, str] = {}
    for i, item in enumerate(items):
        where = f"{param}[{i}]"
        kind = item.get("type")
        if kind == "message":
            role = item["role"]
            text = _text_of(item.get("content"), param=f"{where}.content")
            turns.append(Turn(kind=role, text=text))
        elif kind in ("function_call", "custom_tool_call"):
            turns.append(_call_turn(item))
            call_names[item["call_id"]] = turns[-1].name or item["name"]
        elif kind in ("function_call_output", "custom_tool_call_output"):
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
        elif kind == "compaction" and unseal is not None:
            summary = unseal(item["encrypted_content"], f"{where}.encrypted_content")
            turns.append(Turn(kind="user", text=COMPACTION_PREFIX + summary))
        else:
            raise InvalidRequestError(f"Item type '{kind}' cannot be used as input.", param=where)
    return turns


def _call_turn(item: Item) -> Turn:
    # The model knew a namespaced tool as ``namespace.name`` (services/responses/tools.py).
    name = f"{item['namespace']}.{item['name']}" if item.get("namespace") else item["name"]
    if item["type"] == "custom_tool_call":
        return Turn(
            kind="tool_call", name=name, call_id=item["call_id"], text=item["input"], custom=True
        )
    return Turn(
        kind="tool_call",
        name=name,
        call_id=item["call_id"],
        arguments=item.get("arguments") or "{}",
    )
