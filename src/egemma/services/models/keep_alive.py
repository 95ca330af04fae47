"""A request's ``keep_alive``: how long its model stays loaded once the request is done.

Ollama's field (``docs/api.md``, "keep_alive"): a number of seconds or a duration string such as
``"5m"``, ``"1h30m"`` or ``"90s"``; ``0`` unloads the model as soon as it is idle; any negative
value keeps it loaded until the server stops (or an operator unloads it). Absent or ``null``:
``MODEL_IDLE_TTL``. The parsed value is seconds, ``inf`` for "forever".
"""

from __future__ import annotations

import math
import re
from typing import Any

from egemma.errors import InvalidRequestError

MAX_SECONDS = 30 * 86_400.0  # MODEL_IDLE_TTL's own bound
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)")
_NUMBER = re.compile(r"[+-]?(\d+(?:\.\d+)?|\.\d+)")


def _bad(value: Any, param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid keep_alive {value!r}: use seconds (e.g. 300), a duration such as '5m', "
        "'1h30m' or '90s', 0 to unload after this request, or -1 to keep the model loaded.",
        param=param,
        code="invalid_keep_alive",
    )


def _duration(text: str) -> float | None:
    """Go's ``time.ParseDuration`` subset Ollama clients send: ``[-]`` then number+unit parts."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if not body or len(text) - len(body) > 1:
        return None
    pos, total = 0, 0.0
    for match in _PART.finditer(body):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return sign * total if pos == len(body) else None


def parse_keep_alive(value: Any, param: str = "keep_alive") -> float | None:
    """Seconds (``inf``: forever), or None when the request leaves it to the server."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _bad(value, param)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        else:
            parsed = _duration(text)
            if parsed is None:
                raise _bad(value, param)
            seconds = parsed
    else:
        raise _bad(value, param)
    if math.isnan(seconds) or math.isinf(seconds):
        raise _bad(value, param)
    if seconds < 0:
        return math.inf
    if seconds > MAX_SECONDS:
        raise InvalidRequestError(
            f"keep_alive {value!r} is longer than 30 days; use -1 to keep the model loaded.",
            param=param,
            code="invalid_keep_alive",
        )
    return seconds
