"""``POST /v1/responses/compact``: a long item list (or a stored chain) → a short one.

As openai-python's ``CompactedResponse`` describes it, the output is every user message of the
conversation followed by one ``compaction`` item. Everything else (assistant messages, tool
calls and results, reasoning, earlier compactions) is summarised by the local chat model; the
summary is sealed into the item's ``encrypted_content`` (sealing.py, purpose ``compaction``), so
only this server can expand it again: a ``compaction`` item in a later ``input`` becomes a
"summary of the earlier conversation" turn (turns.py), and a changed one is a 400.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import anyio

from egemma.engines.base import Disconnected
from egemma.errors import InvalidRequestError
from egemma.ids import new_id
from egemma.protocol.responses import ResponsesRequest
from egemma.services.generation import complete_text
from egemma.services.prompting.types import Turn
from egemma.services.responses.context import chain_items, load_context, resolve_engine
from egemma.services.responses.service import ResponsesService
from egemma.services.responses.turns import items_to_turns
from egemma.store.base import Owner

log = logging.getLogger(__name__)

SUMMARY_TOKENS = 256
MAX_SHRINKS = 8
INSTRUCTION = (
    "Below is the transcript of a conversation between a user and an assistant. Write a short "
    "summary of what the assistant said and did (answers, tool calls and their results, "
    "decisions), so the conversation can continue from the summary alone. Reply with the "
    "summary only.\n\n"
)


def transcript(turns: Sequence[Turn]) -> list[str]:
    """One line per turn, as the summarising model reads it."""
    lines = []
    for turn in turns:
        if turn.kind == "tool_call":
            lines.append(f"assistant called {turn.name}: {turn.arguments or turn.text}")
        elif turn.kind == "tool_result":
            lines.append(f"tool {turn.name} returned: {turn.text}")
        elif turn.text:
            lines.append(f"{turn.kind}: {turn.text}")
    return lines


async def compact(
    service: ResponsesService,
    body: ResponsesRequest,
    owner: Owner,
    is_disconnected: Disconnected | None = None,
) -> dict[str, Any]:
    """The ``response.compaction`` object for ``body`` (``input`` and/or
    ``previous_response_id``, ``instructions``, ``model``)."""
    engine = resolve_engine(service.engines, service.settings.chat, body.model)
    records = service.store.scoped(owner)
    if body.input or not body.previous_response_id:
        context = await load_context(records, body)
        service.seal.open_items(context.new_items)
        items = context.items
    else:  # a stored chain alone
        items = await chain_items(records, body.previous_response_id)
    turns = await anyio.to_thread.run_sync(
        lambda: items_to_turns(items, unseal=service.unseal_compaction)
    )
    users = [dict(i) for i in items if i.get("type") == "message" and i.get("role") == "user"]
    summary, prompt_tokens, completion_tokens = await _summarise(
        service, engine, turns, body.instructions, is_disconnected
    )
    item = {
        "id": new_id("cmp"),
        "type": "compaction",
        "encrypted_content": service.seal.seal(summary, purpose="compaction"),
        "created_by": engine.name,
    }
    return {
        "id": new_id("resp"),
        "object": "response.compaction",
        "created_at": int(time.time()),
        "output": [*users, item],
        "usage": {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


async def _summarise(
    service: ResponsesService,
    engine: Any,
    turns: list[Turn],
    instructions: str | None,
    is_disconnected: Disconnected | None,
) -> tuple[str, int, int]:
    """Summarise ``turns``; when the transcript does not fit the model, its oldest lines are
    dropped (half of them per try) until it does."""
    prompter = await service.prompts.get(engine)
    lines = transcript(turns)
    head = INSTRUCTION + (
        f"Instructions the assistant followed: {instructions}\n\n" * bool(instructions)
    )
    for _ in range(MAX_SHRINKS):
        ask = [Turn(kind="user", text=head + "\n".join(lines))]
        try:
            result = await complete_text(
                engine,
                prompter,
                ask,
                max_tokens=SUMMARY_TOKENS,
                temperature=0.2,
                is_disconnected=is_disconnected,
            )
        except InvalidRequestError as exc:
            if exc.code != "context_length_exceeded" or len(lines) <= 1:
                raise
            lines = lines[len(lines) // 2 :]
            log.info("compaction transcript too long: kept the newest %d lines", len(lines))
            continue
        return result.text, result.prompt_tokens, result.completion_tokens
    raise InvalidRequestError(
        "The conversation is too long to compact with this model.",
        param="input",
        code="context_length_exceeded",
    )
