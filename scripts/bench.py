"""``make bench``: run every ``scripts/bench_*.py``, print one table, write a JSON report.

Each benchmark compares eGemma with a baseline measured in the same run on the same machine
(native llama-cpp-python decode and prefill, sentence-transformers throughput, serial vs
concurrent embeddings, cold vs warm turn), so the figures that matter are ratios. Absolute
times are printed, never asserted; a missed goal is flagged in the table, not an error.

Contract for a ``scripts/bench_<area>.py`` script
-------------------------------------------------
- Runs standalone with the app's venv (``.venv/bin/python scripts/bench_<area>.py``) from the
  repository root, needs no network, starts and stops whatever it measures, keeps its run short
  (a few minutes at most on 2 cores) and exits 0 when it measured.
- Progress goes to stderr (shown live). The LAST non-empty line of stdout is ONE JSON object::

      {"name": "embeddings",
       "rows": [{"metric": "engine vs sentence-transformers, batch 1",
                 "value": 412.0, "baseline": 131.0, "ratio": 3.15,
                 "goal": ">= 2.8", "unit": "texts/s"}]}

  ``metric`` (str) and ``value`` (number) are required; ``baseline`` and ``ratio`` are numbers
  or null (``ratio`` is normally value / baseline, or whichever way round the goal reads);
  ``goal`` is null or ``"<op> <number>"`` with op one of ``>= > <= <`` and is checked against
  ``ratio`` when present, else against ``value``; ``unit`` describes value and baseline.
- A script that crashes, times out or prints no valid object is reported as an error and makes
  ``make bench`` exit 1; the other scripts still run.

Usage: ``python scripts/bench.py [--only SUBSTRING] [--timeout SECONDS] [--list]`` (``make bench
BENCH=embeddings`` passes ``--only``).
Report: ``results/bench-<UTC timestamp>.json`` (machine, commit, every row, errors).
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
HEADER = ["bench", "metric", "value", "baseline", "ratio", "goal", "unit", "verdict"]


class ContractError(ValueError):
    """A bench script's output does not follow the contract in this module's docstring."""


def discover(folder: Path, only: str | None) -> list[Path]:
    scripts = sorted(folder.glob("bench_*.py"))
    return [s for s in scripts if only is None or only in s.stem]


def parse_output(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ContractError("printed nothing on stdout")
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise ContractError(f"last stdout line is not JSON ({exc}): {lines[-1][:120]!r}") from None
    if not isinstance(result, dict) or not isinstance(result.get("name"), str):
        raise ContractError('expected an object with a string "name"')
    rows = result.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ContractError('expected a non-empty "rows" list')
    for row in rows:
        _check_row(row)
    return result


def _check_row(row: object) -> None:
    if not isinstance(row, dict) or not isinstance(row.get("metric"), str):
        raise ContractError(f'row without a string "metric": {row!r}')
    if not _is_number(row.get("value")):
        raise ContractError(f'row {row["metric"]!r}: "value" must be a number')
    for key in ("baseline", "ratio"):
        if row.get(key) is not None and not _is_number(row[key]):
            raise ContractError(f'row {row["metric"]!r}: "{key}" must be a number or null')
    if row.get("goal") is not None:
        _parse_goal(str(row["goal"]))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_goal(goal: str) -> tuple[str, float]:
    text = goal.replace("≥", ">=").replace("≤", "<=").replace("×", "").replace("x", "").strip()
    for op in (">=", "<=", ">", "<"):
        if text.startswith(op):
            try:
                return op, float(text[len(op) :].strip())
            except ValueError:
                break
    raise ContractError(f'goal {goal!r} is not "<op> <number>" with op in >= > <= <')


def verdict(row: dict[str, Any]) -> str:
    if row.get("goal") is None:
        return "-"
    op, target = _parse_goal(str(row["goal"]))
    measured = row["ratio"] if row.get("ratio") is not None else row["value"]
    return "meets goal" if OPS[op](float(measured), target) else "BELOW GOAL"


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def run_one(script: Path, timeout: float) -> tuple[dict[str, Any] | None, str | None, float]:
    """(result, error, seconds); stderr streams through to ours as progress."""
    print(f"==> {script.name}", file=sys.stderr, flush=True)
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s", time.monotonic() - start
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        return None, f"exited with code {proc.returncode}", elapsed
    try:
        return parse_output(proc.stdout), None, elapsed
    except ContractError as exc:
        return None, str(exc), elapsed


def table(results: list[dict[str, Any]], errors: dict[str, str]) -> str:
    rows = [HEADER]
    for result in results:
        for row in result["rows"]:
            cells = [row.get(k) for k in ("metric", "value", "baseline", "ratio", "goal", "unit")]
            rows.append([result["name"], *(_fmt(c) for c in cells), verdict(row)])
    for script, error in errors.items():
        rows.append([script, "ERROR: " + error, "", "", "", "", "", "error"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only scripts whose name contains this")
    parser.add_argument(
        "--timeout", type=float, default=float(os.environ.get("BENCH_TIMEOUT", 1800))
    )
    parser.add_argument("--list", action="store_true", help="list the bench scripts and exit")
    parser.add_argument("--dir", type=Path, default=ROOT / "scripts", help="where bench_*.py are")
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="report folder")
    args = parser.parse_args(argv)
    scripts = discover(args.dir, args.only)
    if args.list or not scripts:
        print("\n".join(s.name for s in scripts) or "no scripts/bench_*.py found")
        return 0
    started = datetime.now(UTC)
    results: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    for script in scripts:
        result, error, elapsed = run_one(script, args.timeout)
        timings[script.name] = round(elapsed, 2)
        if result is not None:
            results.append({**result, "script": script.name})
        else:
            errors[script.name] = error or "unknown error"
    print()
    print(table(results, errors))
    report = {
        "started": started.isoformat(),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "commit": _commit(),
        "seconds": timings,
        "benches": [
            {**r, "rows": [{**row, "verdict": verdict(row)} for row in r["rows"]]} for r in results
        ],
        "errors": errors,
    }
    out = args.results / f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport: {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
