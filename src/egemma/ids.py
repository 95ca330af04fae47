"""Ids with the real OpenAI prefixes, from one function."""

from __future__ import annotations

import secrets

PREFIXES = frozenset(
    {
        "resp",
        "msg",
        "fc",
        "call",
        "rs",
        "conv",
        "fco",
        "ctc",
        "ctco",
        "item",
        "chatcmpl",
        "req",
        "cmp",
        "rerank",
    }
)


def new_id(prefix: str) -> str:
    """``resp_`` + 48 hex characters, etc. Random, URL-safe, unguessable."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    sep = "-" if prefix == "chatcmpl" else "_"
    return f"{prefix}{sep}{secrets.token_hex(24)}"
