"""The Locust release gate's arithmetic (loadtests/gate.py), without Locust or gevent."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_gate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("load_gate", ROOT / "loadtests" / "gate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_gate"] = module
    spec.loader.exec_module(module)
    return module


gate = _load_gate()
pytestmark = pytest.mark.unit


def _thresholds(tmp_path: Path, body: str) -> Any:
    path = tmp_path / "thresholds.toml"
    path.write_text(body)
    return gate.load_thresholds(path)


BASIC = """
[defaults]
max_failure_ratio = 0.05
max_shed_ratio = 0.2
min_requests = 2
[gate]
min_total_requests = 10
[endpoints."embeddings"]
p95_ms = 100
[endpoints."summarize"]
p95_ms = 1000
"""


def test_shipped_thresholds_file_parses() -> None:
    thresholds = gate.load_thresholds(ROOT / "loadtests" / "thresholds.toml")
    assert "responses: stream" in thresholds.endpoints
    assert "responses: TTFT" in thresholds.endpoints
    assert all(limits.min_requests >= 1 for limits in thresholds.endpoints.values())


def test_passes_within_thresholds(tmp_path: Path) -> None:
    entries = gate.merge([("embeddings", 50, 1, 10.0, 90.0), ("summarize", 5, 0, 400.0, 900.0)])
    verdict = gate.evaluate(entries, _thresholds(tmp_path, BASIC))
    assert verdict.passed, verdict.problems
    assert "release gate: PASS" in gate.render(verdict)


def test_shed_answers_are_counted_apart_not_as_successes(tmp_path: Path) -> None:
    raw = [
        ("embeddings", 40, 0, 10.0, 50.0),
        ("embeddings [429]", 15, 0, 1.0, 2.0),
        ("embeddings [503]", 5, 0, 1.0, 2.0),
        ("summarize", 5, 0, 400.0, 900.0),
    ]
    entries = gate.merge(raw)
    assert entries["embeddings"].requests == 40
    assert entries["embeddings"].shed == {"429": 15, "503": 5}
    verdict = gate.evaluate(entries, _thresholds(tmp_path, BASIC))
    assert not verdict.passed
    assert any("429/503 ratio 33.3%" in p for p in verdict.problems)


def test_p95_failures_and_missing_endpoints_fail_by_name(tmp_path: Path) -> None:
    entries = gate.merge([("embeddings", 50, 10, 10.0, 150.0), ("summarize", 1, 1, 5.0, 5.0)])
    verdict = gate.evaluate(
        entries,
        _thresholds(tmp_path, BASIC),
        missing={"summarize": "POST /summarize answered 404"},
        exceptions=2,
        cpu_warning=True,
    )
    text = "\n".join(verdict.problems)
    assert "embeddings: p95 150 ms > 100 ms" in text
    assert "embeddings: failure ratio 20.0%" in text
    assert "summarize: POST /summarize answered 404" in text
    assert "2 exception(s)" in text
    assert "CPU" in text
    assert "release gate: FAIL" in gate.render(verdict)


def test_an_endpoint_that_never_ran_fails_the_minimum(tmp_path: Path) -> None:
    entries = gate.merge([("embeddings", 50, 0, 10.0, 50.0)])
    verdict = gate.evaluate(entries, _thresholds(tmp_path, BASIC))
    assert any(p.startswith("summarize: 0 requests") for p in verdict.problems)
