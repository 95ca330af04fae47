"""Chat completions on the Responses machinery: messages → items, Responses events → chunks.

Older clients get the same engine, prompt families, grammars, tool handling and generation owner
as ``/v1/responses``; only the wire shape differs (responses-protocol.md §8). The chunks are
plain payloads: ``api/sse.py`` frames them (``data:`` lines, keep-alives, ``[DONE]``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from egemma.engines.base import Disconnected
from egemma.errors import GenerationFailedError, InvalidRequestError
from egemma.ids import new_id
from egemma.protocol.responses import ChatCompletionRequest, ResponsesRequest
from egemma.services.generation import TERMINAL, Run
from egemma.services.responses.service import Prepared, ResponsesService
from egemma.store.base import Owner

Item = dict[str, Any]


def _content_text(content: Any, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
                raise InvalidRequestError(
                    "Only text content parts are supported.", param=f"{param}[{j}]"
                )
            texts.append(str(part.get("text", "")))
        return "\n".join(texts)
    raise InvalidRequestError("content must be a string or a list of parts.", param=param)


def messages_to_items(messages: list[Any]) -> list[Item]:
    items: list[Item] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequestError(f"{where} must be an object.", param=where)
        role = msg.get("role")
        text = _content_text(msg.get("content"), f"{where}.content")
        if role in ("system", "developer", "user"):
            items.append({"role": role, "content": text})
        elif role == "assistant":
            if text:
                items.append({"role": "assistant", "content": text})
            for j, call in enumerate(msg.get("tool_calls") or []):
                if isinstance(call, dict) and isinstance(call.get("custom"), dict):
                    items.append(_custom_call_item(call))
                    continue
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict):
                    raise InvalidRequestError(
                        "tool_calls entries need a function.", param=f"{where}.tool_calls[{j}]"
                    )
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call.get("id") or new_id("call"),
                        "name": fn.get("name"),
                        "arguments": fn.get("arguments") or "{}",
                    }
                )
        elif role == "tool":
            items.append(
                {"type": "function_call_output", "call_id": msg.get("tool_call_id"), "output": text}
            )
        else:
            raise InvalidRequestError(f"Unknown role '{role}'.", param=f"{where}.role")
    return items


def _custom_call_item(call: dict[str, Any]) -> Item:
    custom = call["custom"]
    return {
        "type": "custom_tool_call",
        "call_id": call.get("id") or new_id("call"),
        "name": custom.get("name"),
        "input": custom.get("input") if isinstance(custom.get("input"), str) else "",
    }


def _tools(tools: list[Any] | None) -> list[Any] | None:
    """Chat's nested custom tools (``{"type": "custom", "custom": {…}}``, the grammar under
    ``format.grammar``) in the Responses shape; everything else as sent."""
    if not tools:
        return tools
    out: list[Any] = []
    for tool in tools:
        custom = tool.get("custom") if isinstance(tool, dict) else None
        if _tool_type(tool) != "custom" or not isinstance(custom, dict):
            out.append(tool)
            continue
        fmt = custom.get("format")
        if isinstance(fmt, dict) and isinstance(fmt.get("grammar"), dict):
            fmt = {"type": "grammar", **fmt["grammar"]}
        out.append({**custom, "type": "custom", "format": fmt})
    return out


def _tool_type(tool: Any) -> Any:
    return tool.get("type", "function") if isinstance(tool, dict) else None


def _text_config(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        if not isinstance(spec, dict):
            raise InvalidRequestError(
                "response_format.json_schema must be an object with 'name' and 'schema'.",
                param="response_format.json_schema",
            )
        return {
            "format": {
                "type": "json_schema",
                "name": spec.get("name", "output"),
                "schema": spec.get("schema") or {"type": "object"},
                "strict": spec.get("strict", False),
            }
        }
    if kind in ("json_object", "text"):
        return {"format": {"type": kind}}
    raise InvalidRequestError(f"Unknown response_format type '{kind}'.", param="response_format")


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"type": "function", "name": choice["function"].get("name")}
    if isinstance(choice, dict) and isinstance(choice.get("custom"), dict):
        return {"type": "custom", "name": choice["custom"].get("name")}
    return choice


def to_responses_request(req: ChatCompletionRequest) -> ResponsesRequest:
    effort = {"effort": req.reasoning_effort} if req.reasoning_effort else None
    return ResponsesRequest.model_validate(
        {
            "model": req.model,
            "input": messages_to_items(req.messages),
            "tools": _tools(req.tools),
            "tool_choice": _tool_choice(req.tool_choice),
            "max_output_tokens": req.max_completion_tokens or req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "presence_penalty": req.presence_penalty,
            "frequency_penalty": req.frequency_penalty,
            "text": _text_config(req.response_format),
            "reasoning": effort,
            "store": False,
            "metadata": req.metadata,
            "keep_alive": req.keep_alive,
        }
    )


class ChunkMapper:
    """Responses events → ``chat.completion.chunk`` payloads, and the final completion."""

    def __init__(self, model: str) -> None:
        self.id = new_id("chatcmpl")
        self.created = int(time.time())
        self.model = model
        self.calls: dict[str, int] = {}
        self.started = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if not self.started:
            delta = {"role": "assistant", **delta}
            self.started = True
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    def map(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event["type"]
        if kind == "response.output_text.delta":
            return [self._chunk({"content": event["delta"]})]
        if kind == "response.reasoning_text.delta":
            return [self._chunk({"reasoning_content": event["delta"]})]
        if kind == "response.output_item.added" and event["item"]["type"] == "function_call":
            item = event["item"]
            index = self.calls.setdefault(item["id"], len(self.calls))
            call = {
                "index": index,
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if kind == "response.function_call_arguments.delta":
            index = self.calls[event["item_id"]]
            call = {"index": index, "function": {"arguments": event["delta"]}}
            return [self._chunk({"tool_calls": [call]})]
        if kind == "response.output_item.done" and event["item"]["type"] == "custom_tool_call":
            # Chat chunks have no custom-call delta: the whole call once its input is done.
            item = event["item"]
            index = self.calls.setdefault(item["id"], len(self.calls))
            call = {
                "index": index,
                "id": item["call_id"],
                "type": "custom",
                "custom": {"name": item["name"], "input": item["input"]},
            }
            return [self._chunk({"tool_calls": [call]})]
        if kind in ("response.completed", "response.incomplete"):
            return [self._chunk({}, finish_reason(event["response"]))]
        return []


def finish_reason(response: dict[str, Any]) -> str:
    if response["status"] == "incomplete":
        return "length"
    if any(item["type"] in ("function_call", "custom_tool_call") for item in response["output"]):
        return "tool_calls"
    return "stop"


def usage(response: dict[str, Any]) -> dict[str, Any]:
    u = response.get("usage") or {}
    prompt, completion = u.get("input_tokens", 0), u.get("output_tokens", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": (u.get("input_tokens_details") or {}).get("cached_tokens", 0)
        },
    }


def completion(response: dict[str, Any], model: str) -> dict[str, Any]:
    text = "".join(
        part.get("text", "")
        for item in response["output"]
        if item["type"] == "message"
        for part in item.get("content", [])
    )
    calls = [_message_call(item) for item in response["output"] if item["type"] in CALLS]
    reasoning = "".join(
        part.get("text", "")
        for item in response["output"]
        if item["type"] == "reasoning"
        for part in item.get("content", [])
    )
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text or (None if calls else ""),
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = reasoning
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": response["created_at"],
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason(response),
                "logprobs": None,
            }
        ],
        "usage": usage(response),
    }


CALLS = ("function_call", "custom_tool_call")


def _message_call(item: dict[str, Any]) -> dict[str, Any]:
    if item["type"] == "custom_tool_call":
        return {
            "id": item["call_id"],
            "type": "custom",
            "custom": {"name": item["name"], "input": item["input"]},
        }
    return {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": item["arguments"]},
    }


STREAM_FAILED = {
    "error": {
        "message": "Generation failed.",
        "type": "server_error",
        "param": None,
        "code": "server_error",
    }
}


def stream_failed(response: dict[str, Any]) -> dict[str, Any]:
    """The error payload ending a failed chat stream: the response's own code and message
    (a model that could not load says so), else the generic failure."""
    error = response.get("error") or {}
    if not error.get("message"):
        return STREAM_FAILED
    return {
        "error": {
            "message": error["message"],
            "type": "server_error",
            "param": None,
            "code": error.get("code") or "server_error",
        }
    }


@dataclass(frozen=True)
class ChatPrepared:
    prepared: Prepared
    model: str
    include_usage: bool


class ChatCompletionsService:
    """``/v1/chat/completions`` through the Responses service's generation path."""

    def __init__(self, responses: ResponsesService) -> None:
        self.responses = responses

    async def prepare(self, body: ChatCompletionRequest, owner: Owner) -> ChatPrepared:
        prepared = await self.responses.prepare(to_responses_request(body), owner)
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return ChatPrepared(prepared, body.model or prepared.engine.name, include_usage)

    async def start(
        self, p: ChatPrepared, is_disconnected: Disconnected | None = None, *, stream: bool = False
    ) -> Run:
        return await self.responses.start(p.prepared, is_disconnected, stream=stream)

    async def chunks(self, p: ChatPrepared, run: Run) -> AsyncIterator[dict[str, Any]]:
        """``chat.completion.chunk`` payloads for a streamed run (an error payload on failure,
        a usage chunk when asked)."""
        mapper = ChunkMapper(p.model)
        try:
            async for event in run.events:
                for payload in mapper.map(event):
                    yield payload
                if event["type"] == "response.failed":
                    yield stream_failed(event["response"])
                if event["type"] in TERMINAL and p.include_usage:
                    yield {
                        "id": mapper.id,
                        "object": "chat.completion.chunk",
                        "created": mapper.created,
                        "model": mapper.model,
                        "choices": [],
                        "usage": usage(event["response"]),
                    }
        finally:
            await run.events.aclose()  # type: ignore[attr-defined]

    async def complete(
        self, p: ChatPrepared, run: Run, is_disconnected: Disconnected | None = None
    ) -> dict[str, Any]:
        response = await run.final(is_disconnected)
        if response["status"] == "failed":
            error = response.get("error") or {}
            raise GenerationFailedError(
                error.get("message") or "Generation failed.", code=error.get("code")
            )
        return completion(response, p.model)
