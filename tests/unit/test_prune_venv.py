"""scripts/prune_venv.py: the images keep the server's dependency closure and drop the rest."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.unit


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prune_venv", ROOT / "scripts" / "prune_venv.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["prune_venv"] = module
    spec.loader.exec_module(module)
    return module


prune = _load()


def test_closure_follows_requirements_and_extras_only() -> None:
    dists = prune.installed()
    plain = prune.closure({"egemma": set()}, dists)
    assert {"egemma", "fastapi", "starlette", "pydantic", "hypercorn"} <= plain
    assert "pytest" not in plain
    assert "torch" not in plain
    with_test = prune.closure({"egemma": {"test"}}, dists)
    assert {"pytest", "pluggy", "ruff"} <= with_test


def test_dry_run_lists_what_would_go(capsys: pytest.CaptureFixture[str]) -> None:
    assert prune.main(["--extras", "llama,gemini", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "keeping" in out
    assert "  - pytest " in out
