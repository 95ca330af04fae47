"""What ``/summarize`` does to an upload before any model sees it.

- ``language_for``: the original eGemma's extension table (anything else is ``code``).
- ``condense_log``: repeated log lines collapse into one line with a count and a time span.
- ``split_by_tokens``: parts of at most N tokens, cut on line boundaries (map-reduce input).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

EXTENSION_TO_LANGUAGE = {
    "py": "Python",
    "js": "JavaScript",
    "ts": "TypeScript",
    "java": "Java",
    "cpp": "C++",
    "c": "C",
    "go": "Go",
    "rs": "Rust",
    "sh": "Shell script",
    "html": "HTML",
    "css": "CSS",
    "yml": "YAML",
    "json": "JSON",
    "xml": "XML",
    "sql": "SQL",
    "md": "Markdown",
    "log": "Log File",
}
DEFAULT_LANGUAGE = "code"
LOG_LANGUAGE = "Log File"
MIN_REPEATS = 5  # the original collapsed a line pattern seen at least this often

# Control bytes that text files legitimately contain: tab, LF, FF, CR, backspace, escape.

# Leading timestamps, most specific first: [bracketed], ISO 8601, syslog, time of day.
_TIMESTAMP_RES = (
    re.compile(r"^\[([^\[\]]{4,64})\]\s*"),
    re.compile(
        r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)\s*"
    ),
    re.compile(r"^([A-Z][a-z]{2} +\d{1,2} \d{2}:\d{2}:\d{2})\s*"),
    re.compile(r"^(\d{2}:\d{2}:\d{2}(?:[.,]\d+)?)\s*"),
)
_VARIABLE_RE = re.compile(r"0x[0-9a-fA-F]+|\b[0-9a-fA-F]{8,}\b|\d+")


def language_for(filename: str | None) -> str:
    """Language from the extension of the upload's name (only ever used as a string)."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    _, dot, ext = name.rpartition(".")
    return EXTENSION_TO_LANGUAGE.get(ext.lower(), DEFAULT_LANGUAGE) if dot else DEFAULT_LANGUAGE


# ------------------------------------------------------------------------------------------
# Log condensing
# ------------------------------------------------------------------------------------------


def _split_timestamp(line: str) -> tuple[str | None, str]:
    for pattern in _TIMESTAMP_RES:
        match = pattern.match(line)
        if match:
            return match.group(1), line[match.end() :]
    return None, line


@dataclass
class _Group:
    first_index: int
    first_line: str
    count: int = 0
    times: list[str] = field(default_factory=list)


def condense_log(text: str, min_repeats: int = MIN_REPEATS) -> str:
    """Collapse lines whose message (timestamp removed, numbers and hex ids generalised)
    appears ``min_repeats`` times or more into their first occurrence plus
    ``(Repeated N times between T1 and T2)``; other lines stay as they are, in order."""
    lines = text.splitlines()
    groups: dict[str, _Group] = {}
    keys: list[str | None] = []
    for index, line in enumerate(lines):
        if not line.strip():
            keys.append(None)
            continue
        stamp, message = _split_timestamp(line)
        key = _VARIABLE_RE.sub("#", " ".join(message.split()))
        keys.append(key)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(index, line)
        group.count += 1
        if stamp is not None:
            group.times.append(stamp)
    out: list[str] = []
    for index, (line, line_key) in enumerate(zip(lines, keys, strict=True)):
        found = groups.get(line_key) if line_key is not None else None
        if found is None or found.count < min_repeats:
            out.append(line)
        elif found.first_index == index:
            out.append(found.first_line + _repeat_note(found))
    return "\n".join(out)


def _repeat_note(group: _Group) -> str:
    if group.times:
        return f" (Repeated {group.count} times between {group.times[0]} and {group.times[-1]})"
    return f" (Repeated {group.count} times)"


# ------------------------------------------------------------------------------------------
# Token chunks on line boundaries
# ------------------------------------------------------------------------------------------


def split_by_tokens(text: str, count: Callable[[str], int], budget: int) -> list[str]:
    """Consecutive parts of ``text`` of at most ``budget`` tokens each (by ``count``), cut
    between lines; a single line longer than the budget is cut inside the line."""
    if budget < 1:
        raise ValueError("budget must be positive")
    parts: list[str] = []
    current: list[str] = []
    used = 0
    for line in text.splitlines(keepends=True):
        for piece, tokens in _fit_line(line, count, budget):
            if current and used + tokens > budget:
                parts.append("".join(current))
                current, used = [], 0
            current.append(piece)
            used += tokens
    if current:
        parts.append("".join(current))
    return [p for p in parts if p.strip()]


def _fit_line(line: str, count: Callable[[str], int], budget: int) -> list[tuple[str, int]]:
    """``line`` as one piece, or cut into pieces of at most ``budget`` tokens."""
    tokens = count(line)
    if tokens <= budget:
        return [(line, tokens)]
    pieces: list[tuple[str, int]] = []
    rest = line
    while rest:
        n = count(rest)
        if n <= budget:
            pieces.append((rest, n))
            break
        # Estimate the cut from the characters per token, then shrink until it fits.
        cut = max(1, int(len(rest) * budget / n * 0.9))
        head = rest[:cut]
        head_tokens = count(head)
        while head_tokens > budget and cut > 1:
            cut = max(1, cut // 2)
            head = rest[:cut]
            head_tokens = count(head)
        pieces.append((head, head_tokens))
        rest = rest[cut:]
    return pieces
