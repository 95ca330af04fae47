"""Harmony prompt family (gpt-oss): render turns with ``openai-harmony``, parse channels back.

Mapping (``reference/responses-protocol.md`` §11, gpt-oss ``responses_api``): a system message
with the reasoning effort; a developer message only when there are instructions or tools
(function tools in the ``functions`` namespace); assistant text on the ``final`` channel; tool
calls as assistant ``commentary`` to ``functions.<name>``; tool results from the tool author
``functions.<name>``. Completions are parsed incrementally: ``analysis`` → reasoning, a message
with a recipient → function call, anything else → text.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    Message,
    ReasoningEffort,
    RenderConversationConfig,
    Role,
    StreamableParser,
    StreamState,
    SystemContent,
    ToolDescription,
)

from egemma.engines.base import GeneratedToken
from egemma.services.prompting.harmony_vocab import ensure_harmony_vocab, load_encoding
from egemma.services.prompting.types import DeltaKind, OutputDelta, ToolSpec, Turn

if TYPE_CHECKING:
    from openai_harmony import HarmonyEncoding

__all__ = [
    "HarmonyOutputParser",
    "ensure_harmony_vocab",
    "harmony_effort",
    "load_encoding",
    "render_prompt",
    "stop_token_ids",
]

logger = logging.getLogger(__name__)

MODEL_IDENTITY = "You are a helpful assistant."
FUNCTIONS_NAMESPACE = "functions"
# OpenAI's effort names onto the three levels gpt-oss was trained with.
_EFFORTS: dict[str, ReasoningEffort] = {
    "none": ReasoningEffort.LOW,
    "minimal": ReasoningEffort.LOW,
    "low": ReasoningEffort.LOW,
    "medium": ReasoningEffort.MEDIUM,
    "high": ReasoningEffort.HIGH,
    "xhigh": ReasoningEffort.HIGH,
    "max": ReasoningEffort.HIGH,
}


def harmony_effort(effort: str | None) -> ReasoningEffort:
    """Map an OpenAI ``reasoning.effort`` onto Harmony's low/medium/high (unknown → medium)."""
    return _EFFORTS.get((effort or "medium").strip().lower(), ReasoningEffort.MEDIUM)


def stop_token_ids(encoding: HarmonyEncoding) -> tuple[int, ...]:
    """``<|call|>`` and ``<|return|>``: the model's end-of-action tokens."""
    return tuple(encoding.stop_tokens_for_assistant_actions())


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _system_message(effort: str, conversation_start_date: str | None) -> Message:
    content = (
        SystemContent.new()
        .with_model_identity(MODEL_IDENTITY)
        .with_reasoning_effort(harmony_effort(effort))
    )
    # The library default claims a fixed "Knowledge cutoff: 2024-06"; we do not state one.
    content.knowledge_cutoff = None
    if conversation_start_date:
        content = content.with_conversation_start_date(conversation_start_date)
    return Message.from_role_and_content(Role.SYSTEM, content)


def _tool_description(tool: ToolSpec) -> ToolDescription:
    # An empty schema renders as ``() => any``, a real one as a TypeScript-like signature.
    if tool.kind == "custom":
        note = "Free-form tool: the message is the input itself as plain text, not JSON."
        text = f"{tool.description}\n{note}" if tool.description else note
        return ToolDescription.new(tool.name, text, None)
    return ToolDescription.new(tool.name, tool.description or "", tool.parameters or None)


def _developer_message(instructions: Sequence[str], tools: Sequence[ToolSpec]) -> Message | None:
    text = "\n\n".join(part.strip() for part in instructions if part and part.strip())
    if not text and not tools:
        return None
    content = DeveloperContent.new()
    if text:
        content = content.with_instructions(text)
    if tools:
        content = content.with_function_tools([_tool_description(t) for t in tools])
    return Message.from_role_and_content(Role.DEVELOPER, content)


def _kept_reasoning(turns: Sequence[Turn]) -> set[int]:
    """Indexes of reasoning turns to render.

    Harmony drops chain of thought once a final answer follows it; only the reasoning of the
    turn in progress (after the last assistant message, while tool results come back) is kept.
    """
    if not turns or turns[-1].kind != "tool_result":
        return set()
    last_assistant = max((i for i, t in enumerate(turns) if t.kind == "assistant"), default=-1)
    return {i for i, t in enumerate(turns) if t.kind == "reasoning" and i > last_assistant}


def _tool_author(turn: Turn, call_names: dict[str, str]) -> str:
    name = turn.name or (call_names.get(turn.call_id) if turn.call_id else None) or "tool"
    return f"{FUNCTIONS_NAMESPACE}.{name}"


def _call_message(turn: Turn, name: str) -> Message:
    if turn.custom:  # free-form input, as the model wrote it
        return (
            Message.from_role_and_content(Role.ASSISTANT, turn.text)
            .with_channel("commentary")
            .with_recipient(f"{FUNCTIONS_NAMESPACE}.{name}")
        )
    return (
        Message.from_role_and_content(Role.ASSISTANT, turn.arguments or "{}")
        .with_channel("commentary")
        .with_recipient(f"{FUNCTIONS_NAMESPACE}.{name}")
        .with_content_type("<|constrain|>json")
    )


def _conversation_messages(turns: Sequence[Turn]) -> list[Message]:
    kept = _kept_reasoning(turns)
    call_names: dict[str, str] = {}
    messages: list[Message] = []
    for index, turn in enumerate(turns):
        if turn.kind == "user":
            messages.append(Message.from_role_and_content(Role.USER, turn.text))
        elif turn.kind == "assistant":
            messages.append(
                Message.from_role_and_content(Role.ASSISTANT, turn.text).with_channel("final")
            )
        elif turn.kind == "reasoning" and index in kept:
            messages.append(
                Message.from_role_and_content(Role.ASSISTANT, turn.text).with_channel("analysis")
            )
        elif turn.kind == "tool_call":
            name = turn.name or "tool"
            if turn.call_id:
                call_names[turn.call_id] = name
            messages.append(_call_message(turn, name))
        elif turn.kind == "tool_result":
            author = Author.new(Role.TOOL, _tool_author(turn, call_names))
            messages.append(
                Message.from_author_and_content(author, turn.text)
                .with_channel("commentary")
                .with_recipient("assistant")
            )
    return messages


def render_prompt(
    turns: Sequence[Turn],
    tools: Sequence[ToolSpec],
    *,
    instructions: str | None,
    effort: str,
    encoding: HarmonyEncoding,
    conversation_start_date: str | None = None,
) -> list[int]:
    """Render a conversation as Harmony tokens, ending with the assistant's turn start.

    ``system``/``developer`` turns inside the conversation join ``instructions`` in the developer
    message. ``conversation_start_date`` (``YYYY-MM-DD``) defaults to today's UTC date.
    """
    date = conversation_start_date or dt.datetime.now(dt.UTC).date().isoformat()
    extra = [t.text for t in turns if t.kind in ("system", "developer")]
    messages = [_system_message(effort, date)]
    developer = _developer_message([instructions or "", *extra], tools)
    if developer is not None:
        messages.append(developer)
    messages.extend(_conversation_messages(turns))
    tokens: list[int] = encoding.render_conversation_for_completion(
        Conversation.from_messages(messages),
        Role.ASSISTANT,
        # We already chose which reasoning to keep; let the library render exactly that.
        RenderConversationConfig(auto_drop_analysis=False),
    )
    return tokens


# --------------------------------------------------------------------------------------------
# Incremental parsing
# --------------------------------------------------------------------------------------------


def _tool_name(recipient: str) -> str:
    prefix = f"{FUNCTIONS_NAMESPACE}."
    return recipient[len(prefix) :] if recipient.startswith(prefix) else recipient


class HarmonyOutputParser:
    """Harmony completion tokens → ``OutputDelta``s, one token at a time.

    Built on ``openai_harmony.StreamableParser`` (which handles headers split over many tokens
    and UTF-8 split over tokens) with repairs for common slips of small models: a missing
    ``<|end|>``/``<|start|>assistant`` before a new header, a repeated ``<|start|>``. Output that
    is not Harmony at all degrades to plain text; ``feed`` never raises.
    """

    def __init__(self, encoding: HarmonyEncoding, *, max_header_tokens: int = 64) -> None:
        self._encoding = encoding
        self._max_header_tokens = max_header_tokens
        self._parser = StreamableParser(encoding, Role.ASSISTANT)
        self._state = StreamState.HEADER
        self._header: list[GeneratedToken] = []
        self._kind: DeltaKind | None = "text"  # None: content we do not surface
        self._fallback = False
        special = encoding.encode
        self._start = special("<|start|>", allowed_special="all")[0]
        self._end = special("<|end|>", allowed_special="all")[0]
        self._channel = special("<|channel|>", allowed_special="all")[0]
        self._assistant = encoding.encode("assistant")
        self._terminators = frozenset(
            special("<|end|><|return|><|call|><|endoftext|>", allowed_special="all")
        )

    def feed(self, token: GeneratedToken) -> list[OutputDelta]:
        if self._fallback:
            return self._plain(token)
        try:
            return self._feed_harmony(token)
        except Exception as exc:  # HarmonyError or anything else from the Rust parser
            logger.debug("harmony parse failed at token %d (%s); plain text", token.token_id, exc)
            return self._degrade(token)

    def finish(self) -> list[OutputDelta]:
        # A header that never completed: plain text from a model that ignored the format is
        # returned as text; a real header cut short (special tokens in it) is dropped.
        if self._fallback or self._state != StreamState.HEADER:
            return []
        return self._flush_header()

    # -- internals ----------------------------------------------------------------------------

    def _is_special(self, token_id: int) -> bool:
        try:
            return bool(self._encoding.is_special_token(token_id))
        except (OverflowError, ValueError):
            return False

    def _flush_header(self) -> list[OutputDelta]:
        header, self._header = self._header, []
        if any(self._is_special(t.token_id) for t in header):
            return []
        text = "".join(t.text for t in header)
        return [OutputDelta("text", text)] if text else []

    def _plain(self, token: GeneratedToken) -> list[OutputDelta]:
        if not token.text or self._is_special(token.token_id):
            return []
        return [OutputDelta("text", token.text)]

    def _degrade(self, token: GeneratedToken | None) -> list[OutputDelta]:
        """Give up on Harmony: the pending header text and everything after it is plain text."""
        self._fallback = True
        pending = self._header if self._state == StreamState.HEADER else []
        if token is not None:
            pending = [*pending, token]
        self._header = []
        text = "".join(t.text for t in pending if t.text and not self._is_special(t.token_id))
        return [OutputDelta("text", text)] if text else []

    def _repair(self, token_id: int) -> None:
        """Feed the tokens a slipping model left out before ``token_id``."""
        state = self._state
        if token_id == self._start and state == StreamState.HEADER:
            # A repeated <|start|>: restart the header from scratch.
            self._parser = StreamableParser(self._encoding, None)
            self._header = []
        elif token_id == self._start and state == StreamState.CONTENT:
            self._parser.process(self._end)
        elif token_id == self._channel and state in (StreamState.CONTENT, StreamState.EXPECT_START):
            if state == StreamState.CONTENT:
                self._parser.process(self._end)
            for missing in (self._start, *self._assistant):
                self._parser.process(missing)

    def _feed_harmony(self, token: GeneratedToken) -> list[OutputDelta]:
        if self._state == StreamState.HEADER and token.token_id in self._terminators:
            # A message ended before its header did: text without any Harmony header.
            self._parser = StreamableParser(self._encoding, None)
            self._state = self._parser.state
            return self._flush_header()
        self._repair(token.token_id)
        previous = self._state
        self._parser.process(token.token_id)
        self._state = self._parser.state
        if self._state == StreamState.HEADER:
            self._header.append(token)
            if len(self._header) > self._max_header_tokens:
                return self._degrade(None)
            return []
        if self._state != StreamState.CONTENT:
            self._header = []
            return []
        deltas: list[OutputDelta] = []
        if previous != StreamState.CONTENT:
            deltas.extend(self._open_message())
        delta = self._parser.last_content_delta
        if delta and self._kind is not None and not self._is_special(token.token_id):
            deltas.append(OutputDelta(self._kind, delta))
        return deltas

    def _open_message(self) -> list[OutputDelta]:
        self._header = []
        recipient = self._parser.current_recipient
        channel = self._parser.current_channel
        if self._parser.current_role not in (None, Role.ASSISTANT):
            # A made-up tool result or user turn; generation should have stopped at <|call|>.
            self._kind = None
            return []
        if recipient:
            self._kind = "tool_arguments"
            return [OutputDelta("tool_call", name=_tool_name(recipient))]
        self._kind = "reasoning" if channel == "analysis" else "text"
        return []
