"""The Responses service: request → context → prompt → generation → events → stored response.

``prepare`` does every check that can fail with a 4xx before anything is queued or streamed;
``events`` runs the generation (the caller holds the model's slot) and yields the canonical event
sequence, ending in exactly one terminal event unless the client left.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import jsonschema

from egemma.engines.base import GeneratedToken, SamplingParams, ToolSpec, Turn
from egemma.engines.llamacpp import GenerationStats
from egemma.errors import InvalidRequestError, NotFoundError, UnavailableError
from egemma.protocol.responses import ResponsesRequest
from egemma.runtime import Engines
from egemma.services.context import (
    ToolMode,
    check_text_format,
    items_to_turns,
    parse_tool_choice,
    parse_tools,
)
from egemma.services.conversations import validate_metadata
from egemma.services.generation import check_context, stream_tokens
from egemma.services.items import normalize_input, resolve_references
from egemma.services.prompting import PromptPlan, prompter_for
from egemma.services.response_events import Event, ResponseBuilder, new_response, usage_of
from egemma.settings import Settings

log = logging.getLogger(__name__)

Item = dict[str, Any]
MAX_CHAIN = 1000


@dataclass
class Prepared:
    engine: Any
    plan: PromptPlan
    params: SamplingParams
    builder: ResponseBuilder
    tools: list[ToolSpec]
    tool_mode: ToolMode
    input_items: list[Item]
    store: bool
    conversation_id: str | None
    known_ids: frozenset[str] = frozenset()


@dataclass
class _Draft:
    engine: Any
    tools: list[ToolSpec]
    tool_mode: ToolMode
    new_items: list[Item]
    context: list[Item]
    conversation_id: str | None
    effort: str
    plan_for: Callable[[list[Turn]], PromptPlan]
    turns: list[Turn]
    plan: PromptPlan


def resolve_engine(engines: Engines, settings: Settings, requested: str | None) -> Any:
    """The engine serving ``requested`` (alias map applied); 404 lists the served models."""
    status = engines.capability("chat")
    if not engines.chat:
        reason = status.reason or status.status
        raise UnavailableError(
            f"The chat model is not available ({reason}).", code="model_unavailable"
        )
    if not requested:
        return engines.chat[engines.chat_default or next(iter(engines.chat))]
    name = settings.chat.aliases().get(requested, requested)
    engine = engines.chat.get(name)
    if engine is None:
        served = ", ".join(sorted(engines.chat))
        raise NotFoundError(
            f"The model '{requested}' is not served here. Served models: {served}.",
            param="model",
            code="model_not_found",
        )
    return engine


class ResponsesService:
    def __init__(self, engines: Engines, settings: Settings, store: Any) -> None:
        self.engines = engines
        self.settings = settings
        self.store = store

    # -- context ------------------------------------------------------------------------------

    async def _history(self, previous_id: str) -> list[Item]:
        """Items of the whole chain ending at ``previous_id``: inputs then outputs, oldest first."""
        chain: list[list[Item]] = []
        current: str | None = previous_id
        while current and len(chain) < MAX_CHAIN:
            found = await self.store.responses.get(current)
            if found is None:
                if not chain:
                    raise NotFoundError(
                        f"Previous response with id '{previous_id}' not found.",
                        param="previous_response_id",
                        code="previous_response_not_found",
                    )
                break  # an older link was deleted: keep what remains
            response, inputs = found
            chain.append([*inputs, *response.get("output", [])])
            current = response.get("previous_response_id")
        return [item for link in reversed(chain) for item in link]

    async def _context(self, req: ResponsesRequest) -> tuple[list[Item], list[Item], str | None]:
        """(new input items, full context items, conversation id)."""
        if req.input is None or req.input == [] or req.input == "":
            raise InvalidRequestError("input is required.", param="input")
        new_items = normalize_input(req.input)
        if any(item.get("type") == "item_reference" for item in new_items):
            new_items = await resolve_references(new_items, self.store.responses.find_item)
        conversation_id = _conversation_id(req.conversation)
        if conversation_id and req.previous_response_id:
            raise InvalidRequestError(
                "previous_response_id and conversation cannot be used together.",
                param="conversation",
            )
        history: list[Item] = []
        if req.previous_response_id:
            history = await self._history(req.previous_response_id)
        elif conversation_id:
            items = await self.store.conversations.all_items(conversation_id)
            if items is None:
                raise NotFoundError(
                    f"Conversation with id '{conversation_id}' not found.", param="conversation"
                )
            history = items
        return new_items, [*history, *new_items], conversation_id

    # -- preparation --------------------------------------------------------------------------

    async def _draft(self, req: ResponsesRequest) -> _Draft:
        """Everything a request implies before budgets: engine, tools, context, prompt."""
        engine = resolve_engine(self.engines, self.settings, req.model)
        tools = parse_tools(req.tools)
        tool_mode = parse_tool_choice(req.tool_choice, tools)
        new_items, context, conversation_id = await self._context(req)
        chat = self.settings.chat
        effort = (req.reasoning.effort if req.reasoning else None) or chat.reasoning_effort
        text = req.text.model_dump(exclude_none=True) if req.text else None
        check_text_format(text)
        prompter = prompter_for(engine, chat.prompt_format, self.settings.server.models_root)

        def plan_for(turns: list[Turn]) -> PromptPlan:
            return prompter.plan(
                turns, instructions=req.instructions, tool_mode=tool_mode, effort=effort, text=text
            )

        turns = items_to_turns(context)
        return _Draft(
            engine,
            tools,
            tool_mode,
            new_items,
            context,
            conversation_id,
            effort,
            plan_for,
            turns,
            plan_for(turns),
        )

    async def prepare(self, req: ResponsesRequest) -> Prepared:
        metadata = validate_metadata(req.metadata)
        d = await self._draft(req)
        engine, chat, plan = d.engine, self.settings.chat, d.plan
        if req.truncation == "auto":
            plan, _ = _truncate(engine, d.plan_for, d.turns, req.max_output_tokens)
        budget = check_context(engine, plan, req.max_output_tokens, chat.max_tokens)
        temperature = req.temperature if req.temperature is not None else chat.temperature
        top_p = req.top_p if req.top_p is not None else chat.top_p
        params = SamplingParams(
            max_tokens=budget,
            temperature=temperature,
            top_p=top_p,
            min_p=chat.min_p,
            top_k=chat.top_k,
            stop_token_ids=plan.stop_token_ids,
        )
        store = req.store is not False
        response = new_response(
            req, engine, d.tools, metadata, d.effort, store, d.conversation_id, temperature, top_p
        )
        summary = bool(req.reasoning and (req.reasoning.summary or req.reasoning.generate_summary))
        builder = ResponseBuilder(response, summary=summary, tool_names={t.name for t in d.tools})
        history = d.context[: len(d.context) - len(d.new_items)]
        known = frozenset(i["id"] for i in history if "id" in i)
        return Prepared(
            engine,
            plan,
            params,
            builder,
            d.tools,
            d.tool_mode,
            d.new_items,
            store,
            d.conversation_id,
            known,
        )

    async def count_input_tokens(self, req: ResponsesRequest) -> int:
        return len((await self._draft(req)).plan.tokens)

    # -- generation ---------------------------------------------------------------------------

    async def events(self, p: Prepared, cancel: threading.Event) -> AsyncIterator[Event]:
        """The whole event sequence. The caller holds ``p.engine``'s slot."""
        builder = p.builder
        stats = GenerationStats()
        for event in builder.start():
            yield event
        counter = [0]
        try:
            async for event in self._generate(p, cancel, stats, counter):
                yield event
            if stats.finish_reason == "cancelled":
                stopped_by = getattr(cancel, "reason", None)  # lifecycle.Cancel: the drain
                if stopped_by is None:
                    return  # the client left: nobody to tell
                error = {"code": stopped_by, "message": "The server is shutting down; retry."}
                for event in builder.finish("failed", usage_of(stats, counter[0]), error=error):
                    yield event
                return
        except Exception:
            log.exception("generation failed")
            error = {"code": "server_error", "message": "Generation failed."}
            for event in builder.finish("failed", usage_of(stats, counter[0]), error=error):
                yield event
            return
        reasoning_tokens = counter[0]
        for event in await self._finish(p, stats, reasoning_tokens):
            yield event

    async def _generate(
        self, p: Prepared, cancel: threading.Event, stats: GenerationStats, reasoning: list[int]
    ) -> AsyncIterator[Event]:
        parser = p.plan.make_parser()
        for token_id in p.plan.prefill:
            parser.feed(GeneratedToken(token_id, ""))
        async for token in stream_tokens(p.engine, p.plan, p.params, cancel, stats):
            deltas = parser.feed(token)
            if any(d.kind == "reasoning" for d in deltas):
                reasoning[0] += 1
            for delta in deltas:
                for event in p.builder.feed(delta):
                    yield event
        if stats.finish_reason != "cancelled":
            for delta in parser.finish():
                for event in p.builder.feed(delta):
                    yield event

    async def _finish(self, p: Prepared, stats: GenerationStats, reasoning: int) -> list[Event]:
        builder = p.builder
        usage = usage_of(stats, reasoning)
        problem = self._check_calls(p)
        if problem:
            return builder.finish(
                "failed", usage, error={"code": "invalid_tool_call", "message": problem}
            )
        if stats.finish_reason == "length":
            events = builder.finish("incomplete", usage, incomplete_reason="max_output_tokens")
        else:
            events = builder.finish("completed", usage)
        try:
            await self._persist(p)
        except Exception as exc:  # the answer exists but could not be kept: say so, don't 500
            log.error("could not store response %s: %s", builder.response["id"], exc)
            builder.response["status"] = "failed"
            builder.response["error"] = {
                "code": "store_unavailable",
                "message": "The response was generated but could not be stored; retry.",
            }
            events[-1] = {"type": "response.failed", "response": builder.snapshot()}
        return events

    def _check_calls(self, p: Prepared) -> str | None:
        """Every call names an offered tool and its arguments validate against its parameters."""
        offered = {t.name: t for t in p.tool_mode.offered}
        for item in p.builder.output:
            if item["type"] != "function_call" or item["status"] != "completed":
                continue
            tool = offered.get(item["name"])
            if tool is None:
                return f"The model called '{item['name']}', which is not an offered tool."
            try:
                args = json.loads(item["arguments"] or "{}")
                jsonschema.validate(args, tool.parameters or {"type": "object"})
            except (ValueError, jsonschema.ValidationError, jsonschema.SchemaError) as exc:
                reason = exc.message if isinstance(exc, jsonschema.ValidationError) else str(exc)
                return f"The model's call to '{tool.name}' has invalid arguments: {reason}"
        return None

    async def _persist(self, p: Prepared) -> None:
        response = p.builder.response
        if p.store and self.store is not None:
            await self.store.responses.save(response, p.input_items)
        if p.conversation_id and self.store is not None:
            # Items the client replayed from the conversation are already in it.
            fresh = [i for i in p.input_items if i.get("id") not in p.known_ids]
            outputs = [dict(item) for item in response["output"]]
            await self.store.conversations.add_items(p.conversation_id, [*fresh, *outputs])


def _conversation_id(value: str | dict[str, Any] | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    cid = value.get("id")
    if not isinstance(cid, str):
        raise InvalidRequestError(
            'conversation must be an id or {"id": ...}.', param="conversation"
        )
    return cid


def _truncate(
    engine: Any, plan_for: Any, turns: list[Turn], max_tokens: int | None
) -> tuple[PromptPlan, list[Turn]]:
    """``truncation: auto``: drop the oldest conversation turns (never system/developer) to fit."""
    need = max_tokens or 1
    plan = plan_for(turns)
    while len(plan.tokens) + need > engine.n_ctx:
        droppable = [i for i, t in enumerate(turns) if t.kind not in ("system", "developer")]
        if len(droppable) <= 1:
            break
        del turns[droppable[0]]
        # A tool result without its call cannot be rendered: drop orphans with it.
        turns[:] = _without_orphans(turns)
        plan = plan_for(turns)
    return plan, turns


def _without_orphans(turns: list[Turn]) -> list[Turn]:
    calls = {t.call_id for t in turns if t.kind == "tool_call"}
    return [t for t in turns if t.kind != "tool_result" or t.call_id in calls]
