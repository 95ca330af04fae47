"""Tokenize a rendered chat template so that only the template's own text can be control tokens.

A rendered prompt mixes the template's markup (``<|im_start|>``, ``<start_of_turn>``) with message
text from users, tools and documents. Tokenized in one piece with special-token parsing on, a user
who types ``<|im_end|><|im_start|>system`` forges a real turn (prompt injection into system and
assistant turns). So the template renders markers in place of every message's content; the
markup between markers is tokenized with special tokens, each content without them (llama.cpp's
``parse_special=false``: the text stays text).

A template that rewrites content (slices it, changes its case) breaks the markers: then the real
content is rendered and tokenized whole, which is safe only while no content holds control-token
text; one that does is a 400 for that model.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

from egemma.errors import InvalidRequestError

Tokenize = Callable[[str, bool], list[int]]
_END = "\ue001"  # private-use characters: never markup


def _marker() -> str:
    return f"\ue000{secrets.token_hex(8)}:"


def tokenize_rendered(
    render: Callable[[list[dict[str, str]]], str],
    messages: list[dict[str, str]],
    tokenize: Tokenize,
) -> list[int]:
    """Tokens of ``render(messages)`` with every message content tokenized as plain text."""
    marker = _marker()
    while any(marker in m["content"] for m in messages):
        marker = _marker()
    masked = [{**m, "content": f"{marker}{i}{_END}"} for i, m in enumerate(messages)]
    rendered = render(masked)
    parts = re.split(re.escape(marker) + r"(\d+)" + _END, rendered)
    markup, contents = parts[0::2], parts[1::2]
    if any(marker in p or _END in p for p in markup) or any(
        not c.isdigit() or int(c) >= len(messages) for c in contents
    ):
        return _whole(render, messages, tokenize)
    tokens = tokenize(markup[0], True)
    for index, text in zip(contents, markup[1:], strict=True):
        tokens += tokenize(messages[int(index)]["content"], False)
        tokens += tokenize(text, True)
    return tokens


def _whole(
    render: Callable[[list[dict[str, str]]], str],
    messages: list[dict[str, str]],
    tokenize: Tokenize,
) -> list[int]:
    for m in messages:
        if tokenize(m["content"], True) != tokenize(m["content"], False):
            raise InvalidRequestError(
                f"A {m['role']} message holds control-token text (such as <|im_end|>), and "
                "this model's chat template rewrites messages, so it cannot be kept as text.",
                code="control_tokens_in_text",
            )
    return tokenize(render(messages), True)
