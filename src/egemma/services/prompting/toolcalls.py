"""Output parsers for template models: plain text, our ``<tool_call>`` tags, and grammar JSON.

All implement ``engines.base.OutputParser``: they turn generated tokens into ``OutputDelta``s as the
tokens arrive, holding back only what might still turn out to be markup.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from egemma.engines.base import GeneratedToken
from egemma.services.prompting.templates import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, TURN_END_MARKERS
from egemma.services.prompting.types import OutputDelta, ToolSpec


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``.

    Only a suffix starting with the marker's first character can be one, so the candidates are
    found with ``str.find`` (one C call for the usual token, which holds none) and tried longest
    first; this runs for every marker on every generated token."""
    if not marker:
        return 0
    i = text.find(marker[0], max(len(text) - len(marker) + 1, 0))
    while i >= 0:
        if marker.startswith(text[i:]):
            return len(text) - i
        i = text.find(marker[0], i + 1)
    return 0


class TextParser:
    """Everything is answer text (minus a turn-end marker the model may spell out)."""

    def __init__(self) -> None:
        self._held = ""

    def feed(self, token: GeneratedToken) -> list[OutputDelta]:
        text = self._held + token.text
        for marker in TURN_END_MARKERS:
            text = text.replace(marker, "")
        hold = max(_partial_suffix(text, m) for m in TURN_END_MARKERS)
        self._held = text[len(text) - hold :] if hold else ""
        out = text[: len(text) - hold] if hold else text
        return [OutputDelta("text", out)] if out else []

    def finish(self) -> list[OutputDelta]:
        held, self._held = self._held, ""
        return [OutputDelta("text", held)] if held else []


class ToolTagParser:
    """Text with ``<tool_call>{json}</tool_call>`` blocks (``tool_choice: auto``).

    A block that is not a valid call of an offered tool is given back as text, so nothing the model
    wrote is lost and no invented call reaches the client.
    """

    def __init__(self, tools: Sequence[ToolSpec]) -> None:
        self._tools = {t.name: t for t in tools}
        self._text = TextParser()
        self._buf = ""
        self._in_call = False
        self.invalid_calls = 0

    def feed(self, token: GeneratedToken) -> list[OutputDelta]:
        self._buf += token.text
        return self._drain(final=False)

    def _drain(self, final: bool) -> list[OutputDelta]:
        out: list[OutputDelta] = []
        while self._buf:
            if not self._in_call:
                idx = self._buf.find(TOOL_CALL_OPEN)
                if idx < 0:
                    hold = 0 if final else _partial_suffix(self._buf, TOOL_CALL_OPEN)
                    emit, self._buf = (
                        self._buf[: len(self._buf) - hold],
                        self._buf[len(self._buf) - hold :],
                    )
                    out += self._text.feed(GeneratedToken(-1, emit)) if emit else []
                    break
                before, self._buf = self._buf[:idx], self._buf[idx + len(TOOL_CALL_OPEN) :]
                out += self._text.feed(GeneratedToken(-1, before)) if before else []
                self._in_call = True
            else:
                idx = self._buf.find(TOOL_CALL_CLOSE)
                if idx < 0 and not final:
                    break
                body = self._buf if idx < 0 else self._buf[:idx]
                self._buf = "" if idx < 0 else self._buf[idx + len(TOOL_CALL_CLOSE) :]
                self._in_call = False
                out += self._call(body)
        if final:
            out += self._text.finish()
        return out

    def _call(self, body: str) -> list[OutputDelta]:
        for marker in TURN_END_MARKERS:
            body = body.replace(marker, "")
        try:
            call = json.loads(body)
        except ValueError:
            call = None
        found = _tag_call(call, self._tools)
        if found is not None:
            name, arguments = found
            return [OutputDelta("tool_call", name=name), OutputDelta("tool_arguments", arguments)]
        self.invalid_calls += 1
        return self._text.feed(GeneratedToken(-1, TOOL_CALL_OPEN + body + TOOL_CALL_CLOSE))

    def finish(self) -> list[OutputDelta]:
        return self._drain(final=True)


def _tag_call(call: object, tools: dict[str, ToolSpec]) -> tuple[str, str] | None:
    """(name, arguments or input) of a valid tagged call, else None."""
    if not isinstance(call, dict) or call.get("name") not in tools:
        return None
    tool = tools[call["name"]]
    if tool.kind == "custom":
        value = call.get("input")
        return (tool.name, value) if isinstance(value, str) else None
    arguments = call.get("arguments", {})
    if not isinstance(arguments, dict):
        return None
    return tool.name, json.dumps(arguments, ensure_ascii=False)


_HEAD = re.compile(
    r'^\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(arguments|input)"\s*:\s*', re.S
)


class RawInputParser:
    """A forced custom tool: the whole output is its input (grammar-constrained when the tool
    has a grammar), streamed as it arrives."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._started = False

    def feed(self, token: GeneratedToken) -> list[OutputDelta]:
        out = [] if self._started else [OutputDelta("tool_call", name=self._name)]
        self._started = True
        if token.text:
            out.append(OutputDelta("tool_arguments", token.text))
        return out

    def finish(self) -> list[OutputDelta]:
        return [] if self._started else [OutputDelta("tool_call", name=self._name)]


class JsonCallParser:
    """Grammar-constrained ``{"name": "...", "arguments": {...}}``: the name as soon as it is
    complete, then the arguments streamed token by token (the object's final ``}`` held back)."""

    def __init__(self) -> None:
        self._head = ""
        self._named = False
        self._started = False
        self._held = ""
        self._input: str | None = None  # a custom tool's JSON-string input, decoded at the end

    def feed(self, token: GeneratedToken) -> list[OutputDelta]:
        if not self._named:
            self._head += token.text
            match = _HEAD.match(self._head)
            if not match:
                return []
            self._named = True
            name = json.loads(f'"{match.group(1)}"')
            rest, self._head = self._head[match.end() :].lstrip(), ""
            if match.group(2) == "input":
                self._input = rest
                return [OutputDelta("tool_call", name=name)]
            return [OutputDelta("tool_call", name=name), *self._args(rest)]
        if self._input is not None:
            self._input += token.text
            return []
        return self._args(token.text)

    def _args(self, text: str) -> list[OutputDelta]:
        text = self._held + text
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        stripped = text.rstrip(" \n\t\r}")
        # Hold back trailing braces/space: the last '}' closes the outer object, not the arguments.
        self._held = text[len(stripped) :]
        return [OutputDelta("tool_arguments", stripped)] if stripped else []

    def finish(self) -> list[OutputDelta]:
        if self._input is not None:
            return self._finish_input(self._input)
        held, self._held = self._held.rstrip(), ""
        if not self._named:
            return [OutputDelta("text", self._head)] if self._head.strip() else []
        if held.endswith("}"):
            held = held[:-1].rstrip()  # the outer object's closing brace
        return [OutputDelta("tool_arguments", held)] if held else []

    def _finish_input(self, text: str) -> list[OutputDelta]:
        body = text.rstrip()
        body = body[:-1].rstrip() if body.endswith("}") else body
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        return [OutputDelta("tool_arguments", value)] if isinstance(value, str) and value else []
