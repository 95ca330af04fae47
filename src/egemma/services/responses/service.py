"""The Responses service: request → context → prompt → generation → events → stored response.

``prepare`` does every check that can fail with a 4xx before anything is queued or streamed
(prompt rendering and tokenizing run in a worker thread); ``start`` hands the prepared request
to the ``GenerationRunner``, which admits it and owns it to the end; ``events`` yields the
canonical event sequence, ending in exactly one terminal event unless the client left.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import jsonschema

from egemma.engines.base import (
    ChatEngine,
    Disconnected,
    GenerationStats,
    SamplingParams,
    TokenStream,
)
from egemma.errors import EgemmaError
from egemma.lifecycle import Cancel
from egemma.protocol.responses import ResponsesRequest
from egemma.runtime import Engines
from egemma.services.conversations import validate_metadata
from egemma.services.generation import Event, GenerationRunner, Run, check_context, generate
from egemma.services.models.keep_alive import parse_keep_alive
from egemma.services.models.managed import ManagedChatEngine
from egemma.services.prompting.formats import PromptFormats
from egemma.services.prompting.plan import PromptPlan
from egemma.services.prompting.types import ToolMode, ToolSpec, Turn, feed_all
from egemma.services.responses.context import Context, load_context, resolve_engine
from egemma.services.responses.events import (
    CALL_TYPES,
    ResponseBuilder,
    new_response,
    usage_of,
)
from egemma.services.responses.sealing import INCLUDE as SEAL_INCLUDE
from egemma.services.responses.sealing import ReasoningSeal
from egemma.services.responses.tools import (
    ToolSet,
    accept_tools,
    check_grammar,
    check_text_format,
    parse_tool_choice,
)
from egemma.services.responses.truncation import truncate
from egemma.services.responses.turns import items_to_turns
from egemma.settings import ChatSettings, Settings
from egemma.store.base import Owner, Store

log = logging.getLogger(__name__)
_KINDS = {"function_call": "function", "custom_tool_call": "custom"}


@dataclass
class Prepared:
    engine: ChatEngine
    plan: PromptPlan
    params: SamplingParams
    builder: ResponseBuilder
    tool_mode: ToolMode
    context: Context
    store: bool
    records: Store  # the store as the caller's key sees it (owner-scoped)
    ignored_tools: tuple[str, ...] = ()
    keep_alive: float | None = None  # seconds the model stays loaded after this request


@dataclass
class _Draft:
    engine: ChatEngine
    tools: list[ToolSpec]
    tool_mode: ToolMode
    context: Context
    effort: str
    plan_for: Callable[[list[Turn]], PromptPlan]
    turns: list[Turn]
    toolset: ToolSet


class ResponsesService:
    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        store: Store,
        prompts: PromptFormats,
        runner: GenerationRunner,
    ) -> None:
        self.engines = engines
        self.settings = settings
        self.store = store
        self.prompts = prompts
        self.runner = runner
        self.seal = ReasoningSeal.from_data_dir(settings.server.data_dir)

    def unseal_compaction(self, sealed: str, param: str) -> str:
        return self.seal.open(sealed, param=param, purpose="compaction")

    # -- preparation --------------------------------------------------------------------------

    async def _draft(self, req: ResponsesRequest, records: Store) -> _Draft:
        """Everything a request implies before budgets: engine, tools, context, turns."""
        chat = self.settings.chat
        engine = resolve_engine(self.engines, chat, req.model)
        toolset = await anyio.to_thread.run_sync(accept_tools, req.tools)
        tools = toolset.specs
        if toolset.ignored:
            log.warning(
                "tools not offered to the model (this server cannot run them): %s",
                ", ".join(toolset.ignored),
            )
        tool_mode = parse_tool_choice(req.tool_choice, tools)
        context = await load_context(records, req)
        self.seal.open_items(context.new_items)
        effort = (req.reasoning.effort if req.reasoning else None) or chat.reasoning_effort
        text = req.text.model_dump(exclude_none=True) if req.text else None
        check_text_format(text)
        prompter = await self.prompts.get(engine)
        plan = partial(
            prompter.plan,
            instructions=req.instructions,
            tool_mode=tool_mode,
            effort=effort,
            text=text,
        )
        expand = partial(items_to_turns, unseal=self.unseal_compaction)
        turns = await anyio.to_thread.run_sync(expand, context.items)
        return _Draft(engine, tools, tool_mode, context, effort, plan, turns, toolset)

    async def prepare(self, req: ResponsesRequest, owner: Owner) -> Prepared:
        """``owner`` (the caller's key) scopes every stored row the request reads or writes."""
        metadata = validate_metadata(req.metadata)
        keep_alive = parse_keep_alive(req.keep_alive)
        records = self.store.scoped(owner)
        d = await self._draft(req, records)
        engine, chat = d.engine, self.settings.chat
        if req.truncation == "auto":
            plan = await anyio.to_thread.run_sync(
                truncate, d.plan_for, d.turns, engine.n_ctx, req.max_output_tokens
            )
        else:
            plan = await anyio.to_thread.run_sync(d.plan_for, d.turns)
        budget = check_context(engine, plan, req.max_output_tokens, chat.max_tokens)
        await check_grammar(engine, plan)
        params = sampling_params(req, chat, plan, budget, pin=req.prompt_cache_key or d.context.pin)
        store = req.store is not False
        conversation_id = d.context.conversation_id
        response = new_response(
            req,
            engine.name,
            d.tools,
            metadata,
            d.effort,
            store,
            conversation_id,
            params,
        )
        summary = bool(req.reasoning and (req.reasoning.summary or req.reasoning.generate_summary))
        response["tools"] = d.toolset.echo
        builder = ResponseBuilder(
            response,
            summary=summary,
            tool_names={t.name for t in d.tools},
            tools=d.tools,
            seal=self.seal.seal if SEAL_INCLUDE in (req.include or []) else None,
        )
        ignored = tuple(d.toolset.ignored)
        return Prepared(
            engine,
            plan,
            params,
            builder,
            d.tool_mode,
            d.context,
            store,
            records,
            ignored,
            keep_alive,
        )

    async def count_input_tokens(self, req: ResponsesRequest, owner: Owner) -> int:
        d = await self._draft(req, self.store.scoped(owner))
        plan = await anyio.to_thread.run_sync(d.plan_for, d.turns)
        return len(plan.tokens)

    # -- generation ---------------------------------------------------------------------------

    async def start(
        self, p: Prepared, is_disconnected: Disconnected | None = None, *, stream: bool = False
    ) -> Run:
        """Admit ``p`` to its model; the returned run owns the generation until ``close``.

        A ``stream`` whose model is not loaded starts at once: ``response.created`` and
        ``response.in_progress`` go out, keep-alives follow while the model loads, and a load
        that fails ends the stream with ``response.failed`` (a model that cannot fit its
        budget even alone is still a 503 before any event)."""
        engine = p.engine
        if stream and isinstance(engine, ManagedChatEngine) and engine.needs_load():
            engine.check_fits()
            return self.runner.start_streaming(
                engine,
                p.builder.start(),
                partial(self.events, p, opened=True),
                partial(self._refused, p),
                is_disconnected,
                p.keep_alive,
            )
        return await self.runner.start(
            engine, partial(self.events, p), is_disconnected, p.keep_alive
        )

    def _refused(self, p: Prepared, error: EgemmaError) -> list[Event]:
        """A streamed request whose model could not be loaded or admitted: ``response.failed``
        with the error's code and message (what the JSON answer's 503 would have said)."""
        log.warning(
            "streamed response %s failed before generating: %s",
            p.builder.response["id"],
            error.message,
        )
        failure = {"code": error.code or "server_error", "message": error.message}
        return p.builder.finish("failed", usage_of(GenerationStats(), 0), error=failure)

    async def events(
        self, p: Prepared, cancel: threading.Event, *, opened: bool = False
    ) -> AsyncIterator[Event]:
        """The whole event sequence (``opened``: ``created``/``in_progress`` already sent). The
        caller holds ``p.engine``'s slot."""
        builder = p.builder
        stream = generate(p.engine, p.plan, p.params, cancel)
        stats = stream.stats
        for event in [] if opened else builder.start():
            yield event
        counter = [0]
        try:
            async for event in self._deltas(p, stream, counter):
                yield event
            if stats.finish_reason == "cancelled":
                stopped_by = cancel.reason if isinstance(cancel, Cancel) else None
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
        finally:
            await stream.aclose()
        for event in await self._finish(p, stats, counter[0]):
            yield event

    async def _deltas(
        self, p: Prepared, stream: TokenStream, reasoning: list[int]
    ) -> AsyncIterator[Event]:
        parser = p.plan.make_parser()
        # A prefilled Harmony header opens the forced call: its delta must reach the builder.
        for delta in feed_all(parser, p.plan.prefill):
            for event in p.builder.feed(delta):
                yield event
        async for token in stream:
            deltas = parser.feed(token)
            if any(d.kind == "reasoning" for d in deltas):
                reasoning[0] += 1
            for delta in deltas:
                for event in p.builder.feed(delta):
                    yield event
        if stream.stats.finish_reason != "cancelled":
            for delta in parser.finish():
                for event in p.builder.feed(delta):
                    yield event

    async def _finish(self, p: Prepared, stats: GenerationStats, reasoning: int) -> list[Event]:
        builder = p.builder
        usage = usage_of(stats, reasoning)
        # Close the last item first, so a call that ends the output is checked like the others.
        closed = builder.close_item(
            "incomplete" if stats.finish_reason == "length" else "completed"
        )
        problem = self._check_calls(p)
        if problem:
            return closed + builder.finish(
                "failed", usage, error={"code": "invalid_tool_call", "message": problem}
            )
        if stats.finish_reason == "length":
            events = builder.finish("incomplete", usage, incomplete_reason="max_output_tokens")
        else:
            events = builder.finish("completed", usage)
        events = closed + events
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
        """Every call names an offered tool and its arguments validate against its parameters
        (a custom tool's input against its grammar)."""
        offered = {t.name: t for t in p.tool_mode.offered}
        for item in p.builder.output:
            if item["type"] not in CALL_TYPES or item["status"] != "completed":
                continue
            problem = _call_problem(item, offered.get(p.builder.model_name(item)))
            if problem:
                return problem
        return None

    async def _persist(self, p: Prepared) -> None:
        response = p.builder.response
        context = p.context
        if p.store:
            await p.records.responses.save(response, context.new_items)
        if context.conversation_id:
            # Items the client replayed from the conversation are already in it.
            known = {i["id"] for i in context.history if "id" in i}
            fresh = [i for i in context.new_items if i.get("id") not in known]
            outputs = [dict(item) for item in response["output"]]
            await p.records.conversations.add_items(context.conversation_id, [*fresh, *outputs])


def sampling_params(
    req: ResponsesRequest,
    chat: ChatSettings,
    plan: PromptPlan,
    budget: int,
    pin: str | None = None,
) -> SamplingParams:
    """The one conversion of a request's sampling fields to engine params (server defaults
    where the request is silent); the response object echoes what this returns."""

    def pick(value: float | None, default: float) -> float:
        return value if value is not None else default

    return SamplingParams(
        max_tokens=budget,
        temperature=pick(req.temperature, chat.temperature),
        top_p=pick(req.top_p, chat.top_p),
        min_p=chat.min_p,
        top_k=chat.top_k,
        presence_penalty=pick(req.presence_penalty, 0.0),
        frequency_penalty=pick(req.frequency_penalty, 0.0),
        stop_token_ids=plan.stop_token_ids,
        json_schema=plan.grammar_key(),
        gbnf=plan.gbnf,
        grammar_parts=plan.grammar_parts,
        pin=pin,
    )


def _call_problem(item: dict[str, Any], tool: ToolSpec | None) -> str | None:
    if tool is None or tool.kind != _KINDS[item["type"]]:
        return f"The model called '{item['name']}', which is not an offered tool."
    if tool.kind == "custom":
        if tool.check is not None and not tool.check(item["input"]):
            return f"The model's input to '{tool.wire_name}' does not match its grammar."
        return None
    try:
        args = json.loads(item["arguments"] or "{}")
        jsonschema.validate(args, tool.parameters or {"type": "object"})
    except (ValueError, jsonschema.ValidationError, jsonschema.SchemaError) as exc:
        reason = exc.message if isinstance(exc, jsonschema.ValidationError) else str(exc)
        return f"The model's call to '{tool.wire_name}' has invalid arguments: {reason}"
    return None
