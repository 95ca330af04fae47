"""Parsed output deltas → the canonical Responses event sequence and the final ``Response``.

Per item: ``output_item.added → content_part.added → *.delta → *.done → content_part.done →
output_item.done`` (responses-protocol.md §5); function calls stream
``function_call_arguments.delta/.done``; reasoning streams ``reasoning_text.*`` and, when the
request asks for a summary, ``reasoning_summary_part.*`` / ``reasoning_summary_text.*`` too.
Events are plain dicts without ``sequence_number``: ``api/sse.py`` stamps it, the one writer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from egemma.engines.base import GenerationStats, SamplingParams
from egemma.ids import new_id
from egemma.protocol.responses import ResponsesRequest
from egemma.services.prompting.types import OutputDelta, ToolSpec

Event = dict[str, Any]
CALL_TYPES = frozenset({"function_call", "custom_tool_call"})


class ResponseBuilder:
    """Accumulates one response; every method returns the events it implies, in order."""

    def __init__(
        self,
        response: dict[str, Any],
        *,
        summary: bool,
        tool_names: set[str],
        tools: Sequence[ToolSpec] = (),
        seal: Callable[[str], str] | None = None,
    ) -> None:
        self.response = response
        self.seal = seal  # include: ["reasoning.encrypted_content"] (sealing.py)
        self.summary = summary
        self.tool_names = tool_names | {t.name for t in tools}
        # Model-facing name → spec: custom tools become ``custom_tool_call`` items, namespaced
        # functions are reported by their own name plus ``namespace`` (what Codex routes on).
        self.tools = {t.name: t for t in tools}
        self.output: list[dict[str, Any]] = response["output"]
        self._item: dict[str, Any] | None = None
        self._text = ""
        self.invalid_tool_calls: list[str] = []
        self._model_names: dict[str, str] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> list[Event]:
        snapshot = self.snapshot()
        return [
            {"type": "response.created", "response": snapshot},
            {"type": "response.in_progress", "response": snapshot},
        ]

    def snapshot(self) -> dict[str, Any]:
        copy: dict[str, Any] = json.loads(json.dumps(self.response))  # detached, for the event
        return copy

    def feed(self, delta: OutputDelta) -> list[Event]:
        events: list[Event] = []
        kind = {"text": "message", "reasoning": "reasoning"}.get(delta.kind, "function_call")
        if delta.kind == "tool_arguments":
            if self._item is None or self._item["type"] not in CALL_TYPES:
                return events  # arguments with no open call: nothing to attach them to
        elif delta.kind == "tool_call" or self._item is None or self._item["type"] != kind:
            events += self._close("completed")
            events += self._open(kind, delta)
            if delta.kind == "tool_call":
                return events
        if not delta.text:
            return events
        self._text += delta.text
        events += self._delta(delta.text)
        return events

    def finish(
        self,
        status: str,
        usage: dict[str, Any],
        *,
        incomplete_reason: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> list[Event]:
        item_status = "incomplete" if status == "incomplete" else "completed"
        events = self._close(item_status)
        self.response["status"] = status
        self.response["usage"] = usage
        self.response["completed_at"] = int(time.time()) if status == "completed" else None
        if incomplete_reason:
            self.response["incomplete_details"] = {"reason": incomplete_reason}
        if error:
            self.response["error"] = error
        terminal = {
            "completed": "response.completed",
            "incomplete": "response.incomplete",
            "failed": "response.failed",
        }[status]
        events.append({"type": terminal, "response": self.snapshot()})
        return events

    def close_item(self, status: str) -> list[Event]:
        """Close the item still open (if any) with ``status``; its ``done`` events."""
        return self._close(status)

    # -- items --------------------------------------------------------------------------------

    def _open(self, kind: str, delta: OutputDelta) -> list[Event]:
        index = len(self.output)
        self._text = ""
        if kind == "message":
            item: dict[str, Any] = {
                "id": new_id("msg"),
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
        elif kind == "reasoning":
            item = {
                "id": new_id("rs"),
                "type": "reasoning",
                "status": "in_progress",
                "summary": [],
                "content": [],
            }
        else:
            item = self._call_item(delta.name or "")
        self.output.append(item)
        self._item = item
        events: list[Event] = [
            {"type": "response.output_item.added", "output_index": index, "item": _copy(item)}
        ]
        if kind == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(self._part_event("response.content_part.added", part))
        elif kind == "reasoning":
            part = {"type": "reasoning_text", "text": ""}
            events.append(self._part_event("response.content_part.added", part))
            if self.summary:
                events.append(self._summary_event("response.reasoning_summary_part.added", ""))
        return events

    def _call_item(self, name: str) -> dict[str, Any]:
        spec = self.tools.get(name)
        if spec is not None and spec.kind == "custom":
            item: dict[str, Any] = {
                "id": new_id("ctc"),
                "type": "custom_tool_call",
                "status": "in_progress",
                "call_id": new_id("call"),
                "name": spec.wire_name,
                "input": "",
            }
        else:
            item = {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "call_id": new_id("call"),
                "name": spec.wire_name if spec is not None else name,
                "arguments": "",
            }
        if spec is not None and spec.namespace:
            item["namespace"] = spec.namespace
        self._model_names[item["id"]] = name
        return item

    def model_name(self, item: dict[str, Any]) -> str:
        """The name the model called ``item`` by (``namespace.name`` for namespaced tools)."""
        return self._model_names.get(item["id"], str(item.get("name", "")))

    def _delta(self, text: str) -> list[Event]:
        item = self._item
        assert item is not None
        base = {"item_id": item["id"], "output_index": len(self.output) - 1}
        if item["type"] == "message":
            return [
                {
                    "type": "response.output_text.delta",
                    **base,
                    "content_index": 0,
                    "delta": text,
                    "logprobs": [],
                }
            ]
        if item["type"] == "reasoning":
            events: list[Event] = [
                {"type": "response.reasoning_text.delta", **base, "content_index": 0, "delta": text}
            ]
            if self.summary:
                events.append(
                    {
                        "type": "response.reasoning_summary_text.delta",
                        **base,
                        "summary_index": 0,
                        "delta": text,
                    }
                )
            return events
        if item["type"] == "custom_tool_call":
            return [{"type": "response.custom_tool_call_input.delta", **base, "delta": text}]
        return [{"type": "response.function_call_arguments.delta", **base, "delta": text}]

    def _close(self, status: str) -> list[Event]:
        item, text = self._item, self._text
        if item is None:
            return []
        self._item = None
        index = len(self.output) - 1
        base = {"item_id": item["id"], "output_index": index}
        events: list[Event] = []
        if item["type"] == "message":
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item["content"] = [part]
            events += [
                {
                    "type": "response.output_text.done",
                    **base,
                    "content_index": 0,
                    "text": text,
                    "logprobs": [],
                },
                self._part_event("response.content_part.done", part, item),
            ]
        elif item["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": text}
            item["content"] = [part]
            if self.seal is not None:
                item["encrypted_content"] = self.seal(text)
            events += [
                {"type": "response.reasoning_text.done", **base, "content_index": 0, "text": text},
                self._part_event("response.content_part.done", part, item),
            ]
            if self.summary:
                item["summary"] = [{"type": "summary_text", "text": text}]
                events += [
                    {
                        "type": "response.reasoning_summary_text.done",
                        **base,
                        "summary_index": 0,
                        "text": text,
                    },
                    self._summary_event("response.reasoning_summary_part.done", text, item),
                ]
        elif item["type"] == "custom_tool_call":
            item["input"] = text
            events.append({"type": "response.custom_tool_call_input.done", **base, "input": text})
        else:
            item["arguments"] = text
            if status == "completed" and not self._valid_call(item):
                self.invalid_tool_calls.append(item["name"])
            events.append(
                {
                    "type": "response.function_call_arguments.done",
                    **base,
                    "name": item["name"],
                    "arguments": text,
                }
            )
        item["status"] = status
        events.append(
            {"type": "response.output_item.done", "output_index": index, "item": _copy(item)}
        )
        return events

    def _valid_call(self, item: dict[str, Any]) -> bool:
        if self.model_name(item) not in self.tool_names:
            return False
        try:
            return isinstance(json.loads(item["arguments"] or "{}"), dict)
        except ValueError:
            return False

    def _part_event(
        self, kind: str, part: dict[str, Any], item: dict[str, Any] | None = None
    ) -> Event:
        item = item or self._item
        assert item is not None
        return {
            "type": kind,
            "item_id": item["id"],
            "output_index": len(self.output) - 1,
            "content_index": 0,
            "part": dict(part),
        }

    def _summary_event(self, kind: str, text: str, item: dict[str, Any] | None = None) -> Event:
        item = item or self._item
        assert item is not None
        return {
            "type": kind,
            "item_id": item["id"],
            "output_index": len(self.output) - 1,
            "summary_index": 0,
            "part": {"type": "summary_text", "text": text},
        }


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(item))  # type: ignore[no-any-return]


def usage_of(stats: GenerationStats, reasoning: int) -> dict[str, Any]:
    """The ``usage`` object from generation stats (counts from the model's own tokenizer)."""
    return {
        "input_tokens": stats.prompt_tokens,
        "input_tokens_details": {"cached_tokens": stats.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": stats.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
    }


def new_response(
    req: ResponsesRequest,
    model: str,
    tools: list[ToolSpec],
    metadata: dict[str, str],
    effort: str,
    store: bool,
    conversation_id: str | None,
    params: SamplingParams,
) -> dict[str, Any]:
    """A fresh ``in_progress`` response: every field openai-python's ``Response`` and the Open
    Responses ``ResponseResource`` declare, sampling fields echoed from ``params``."""
    summary = None
    if req.reasoning is not None:
        summary = req.reasoning.summary or req.reasoning.generate_summary
    text = req.text.model_dump(exclude_none=True) if req.text else {}
    text.setdefault("format", {"type": "text"})
    return {
        "id": new_id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "completed_at": None,
        "conversation": {"id": conversation_id} if conversation_id else None,
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": req.max_tool_calls,
        "metadata": metadata,
        "model": req.model or model,
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls
        if req.parallel_tool_calls is not None
        else True,
        "previous_response_id": req.previous_response_id,
        "prompt_cache_key": req.prompt_cache_key,
        "reasoning": {"effort": effort, "summary": summary},
        "safety_identifier": req.safety_identifier,
        "service_tier": "default",
        "store": store,
        "temperature": params.temperature,
        "text": text,
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": [
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
                "strict": t.strict,
            }
            for t in tools
        ],
        "top_logprobs": req.top_logprobs or 0,
        "top_p": params.top_p,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "truncation": req.truncation or "disabled",
        "usage": None,
        "user": req.user,
    }
