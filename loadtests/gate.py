"""The release gate's arithmetic: thresholds from one file, per-endpoint verdicts, one table.

Pure Python (no Locust, no gevent) so pytest can check it without monkey-patching anything;
``locustfile.py`` feeds it Locust's stats in its ``events.quitting`` listener.

Shed answers (429 rate-limited, 503 over capacity) are recorded by the locustfile under their own
entries, ``"<endpoint> [429]"`` / ``"<endpoint> [503]"``: they count neither as successes (they
would pull the p95 down) nor as failures; the gate bounds their share per endpoint instead.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHED_SUFFIX = re.compile(r"^(?P<base>.*) \[(?P<code>429|503)\]$")


@dataclass(frozen=True)
class Limits:
    p95_ms: float | None = None
    max_failure_ratio: float = 0.01
    max_shed_ratio: float = 0.25
    min_requests: int = 3


@dataclass(frozen=True)
class Thresholds:
    endpoints: dict[str, Limits]
    min_total_requests: int = 20
    fail_on_cpu_warning: bool = True


@dataclass
class Entry:
    """One endpoint's numbers, merged over HTTP methods."""

    name: str
    requests: int = 0
    failures: int = 0
    p95_ms: float = 0.0
    p50_ms: float = 0.0
    shed: dict[str, int] = field(default_factory=dict)

    @property
    def shed_total(self) -> int:
        return sum(self.shed.values())


@dataclass(frozen=True)
class Verdict:
    rows: list[list[str]]
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems


def load_thresholds(path: Path) -> Thresholds:
    data: dict[str, Any] = tomllib.loads(path.read_text())
    defaults = data.get("defaults", {})
    endpoints = {
        name: Limits(**{**defaults, **values}) for name, values in data.get("endpoints", {}).items()
    }
    gate = data.get("gate", {})
    return Thresholds(
        endpoints=endpoints,
        min_total_requests=int(gate.get("min_total_requests", 20)),
        fail_on_cpu_warning=bool(gate.get("fail_on_cpu_warning", True)),
    )


def merge(raw: list[tuple[str, int, int, float, float]]) -> dict[str, Entry]:
    """(name, requests, failures, p50 ms, p95 ms) rows → entries, shed rows folded in."""
    entries: dict[str, Entry] = {}
    for name, requests, failures, p50, p95 in raw:
        shed = SHED_SUFFIX.match(name)
        base = shed.group("base") if shed else name
        entry = entries.setdefault(base, Entry(base))
        if shed:
            code = shed.group("code")
            entry.shed[code] = entry.shed.get(code, 0) + requests
            continue
        entry.requests += requests
        entry.failures += failures
        entry.p50_ms = max(entry.p50_ms, p50)
        entry.p95_ms = max(entry.p95_ms, p95)
    return entries


def evaluate(
    entries: dict[str, Entry],
    thresholds: Thresholds,
    *,
    missing: dict[str, str] | None = None,
    exceptions: int = 0,
    cpu_warning: bool = False,
) -> Verdict:
    """Every threshold checked; ``missing`` maps endpoint → why it never answered (404)."""
    missing = missing or {}
    problems: list[str] = []
    rows: list[list[str]] = []
    for name, why in sorted(missing.items()):
        problems.append(f"{name}: {why}")
    for name in sorted(set(thresholds.endpoints) | set(entries)):
        limits = thresholds.endpoints.get(name, Limits())
        entry = entries.get(name, Entry(name))
        answered = entry.requests + entry.shed_total
        fail_ratio = entry.failures / entry.requests if entry.requests else 0.0
        shed_ratio = entry.shed_total / answered if answered else 0.0
        verdicts = _verdicts(name, limits, entry, name in missing, fail_ratio, shed_ratio)
        problems += [problem for _, problem in verdicts if problem]
        p95_limit = "-" if limits.p95_ms is None else f"{limits.p95_ms:.0f}"
        rows.append(
            [
                name,
                str(entry.requests),
                f"{fail_ratio:.1%}",
                f"{entry.shed.get('429', 0)}/{entry.shed.get('503', 0)}",
                f"{entry.p50_ms:.0f}",
                f"{entry.p95_ms:.0f}",
                p95_limit,
                ", ".join(verdict for verdict, _ in verdicts) or "ok",
            ]
        )
    total = sum(e.requests for e in entries.values())
    if total < thresholds.min_total_requests:
        problems.append(f"only {total} requests in all, fewer than {thresholds.min_total_requests}")
    if exceptions:
        problems.append(f"{exceptions} exception(s) in the locustfile's tasks")
    if cpu_warning and thresholds.fail_on_cpu_warning:
        problems.append("Locust's own CPU went above 90 %: the numbers measure Locust, not eGemma")
    return Verdict(rows=rows, problems=problems)


def _verdicts(
    name: str,
    limits: Limits,
    entry: Entry,
    missing: bool,
    fail_ratio: float,
    shed_ratio: float,
) -> list[tuple[str, str | None]]:
    """(verdict, problem) for every threshold one endpoint breaks; ``missing`` has its own
    problem line already."""
    found: list[tuple[str, str | None]] = []
    if missing:
        found.append(("missing", None))
    elif entry.requests < limits.min_requests:
        found.append(
            ("too few", f"{name}: {entry.requests} requests, fewer than {limits.min_requests}")
        )
    if limits.p95_ms is not None and entry.requests and entry.p95_ms > limits.p95_ms:
        found.append(("p95", f"{name}: p95 {entry.p95_ms:.0f} ms > {limits.p95_ms:.0f} ms"))
    if fail_ratio > limits.max_failure_ratio:
        found.append(
            ("failures", f"{name}: failure ratio {fail_ratio:.1%} > {limits.max_failure_ratio:.1%}")
        )
    if shed_ratio > limits.max_shed_ratio:
        found.append(
            (
                "shed",
                f"{name}: 429/503 ratio {shed_ratio:.1%} > {limits.max_shed_ratio:.1%} "
                f"({entry.shed})",
            )
        )
    return found


HEADER = ["endpoint", "requests", "failed", "429/503", "p50 ms", "p95 ms", "p95 limit", "verdict"]


def render(verdict: Verdict) -> str:
    table = [HEADER, *verdict.rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if verdict.passed:
        lines.append("release gate: PASS")
    else:
        lines.append("release gate: FAIL")
        lines.extend(f"  - {p}" for p in verdict.problems)
    return "\n".join(lines)
