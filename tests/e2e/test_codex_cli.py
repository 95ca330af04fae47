"""Codex CLI, unchanged, against the real server on 127.0.0.1 with the shipped SmolLM2 (issue 13),
and a grammar-constrained custom tool call through the real model.

``@openai/codex`` is pinned and installed once with npm into ``~/.cache/egemma/codex-<version>``
(``EGEMMA_CODEX_DIR`` overrides); without npm the Codex test is skipped, saying so. Tiny models:
the assertions are about the protocol completing, never about answer quality."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI
from openai.types.responses import ResponseCustomToolCall

from egemma.app import create_app
from tests.e2e.conftest import KEY, SMOL, real_settings
from tests.servers import LiveServer

pytestmark = pytest.mark.slow

CODEX_VERSION = "0.171.0"
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "codex_request.json"
APPLY_PATCH = next(
    t for t in json.loads(FIXTURE.read_text())["tools"] if t.get("name") == "apply_patch"
)
# Codex's apply_patch grammar is regular: the same language as a Python regex, written
# independently of the server's converter, to check what the grammar produced.
PATCH_LANGUAGE = re.compile(
    r"\*\*\* Begin Patch\n"
    r"(\*\*\* Add File: [^\n]+\n(\+[^\n]*\n)+"
    r"|\*\*\* Delete File: [^\n]+\n"
    r"|\*\*\* Update File: [^\n]+\n(\*\*\* Move to: [^\n]+\n)?"
    r"(((@@|@@ [^\n]+)\n|[-+ ][^\n]*\n)+(\*\*\* End of File\n)?)?)+"
    r"\*\*\* End Patch\n?"
)


EXAMPLE = (
    "Edit files with apply_patch. Example input:\n"
    "*** Begin Patch\n*** Add File: notes.txt\n+Some notes\n*** End Patch\n"
)


def _codex_binary() -> Path:
    base = Path(os.environ.get("EGEMMA_CODEX_DIR") or Path.home() / ".cache" / "egemma")
    prefix = base / f"codex-{CODEX_VERSION}"
    binary = prefix / "node_modules" / ".bin" / "codex"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed, so @openai/codex cannot be installed for this test")
    prefix.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(prefix),
            "--no-audit",
            "--no-fund",
            f"@openai/codex@{CODEX_VERSION}",
        ],
        check=True,
        timeout=900,
    )
    return binary


@pytest.fixture(scope="module")
def codex_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """SmolLM2 with its whole trained context (a Codex turn is about 4,900 tokens), greedy."""
    data = tmp_path_factory.mktemp("codex-data")
    server = LiveServer(create_app(real_settings(data, CHAT_N_CTX="8192", CHAT_TEMPERATURE="0")))
    server.start(timeout=300)
    yield server
    server.stop()


def _codex_home(home: Path, base_url: str) -> Path:
    home.mkdir()
    (home / "config.toml").write_text(
        f'model = "{SMOL}"\n'
        'model_provider = "egemma"\n'
        "[model_providers.egemma]\n"
        'name = "eGemma"\n'
        f'base_url = "{base_url}/v1"\n'
        f'model_catalog_url = "{base_url}/v1/models"\n'
        'env_key = "EGEMMA_API_KEY"\n'
        'wire_api = "responses"\n'
    )
    return home


def test_codex_exec_completes_a_turn(codex_server: LiveServer, tmp_path: Path) -> None:
    codex = _codex_binary()
    home = _codex_home(tmp_path / "codex-home", codex_server.base_url)
    work = tmp_path / "work"
    work.mkdir()
    final = tmp_path / "final.txt"
    env = {**os.environ, "CODEX_HOME": str(home), "EGEMMA_API_KEY": KEY, "NO_COLOR": "1"}
    done = subprocess.run(
        [
            str(codex),
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--sandbox",
            "read-only",
            "-C",
            str(work),
            "-o",
            str(final),
            "Say hello in one short sentence.",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    kinds = [e.get("type") for e in events]
    assert "turn.completed" in kinds, kinds
    assert "turn.failed" not in kinds, done.stdout[-3000:]
    assert "error" not in kinds, done.stdout[-3000:]
    items = [e["item"] for e in events if e.get("type") == "item.completed"]
    answered = final.exists() and final.read_text().strip()
    acted = any(i.get("type") in ("command_execution", "file_change") for i in items)
    assert answered or acted, items
    # Our metadata was read: no "Model metadata ... not found" fallback warning.
    assert "Model metadata for" not in done.stderr


def test_forced_custom_tool_input_matches_its_lark_grammar(oai: OpenAI) -> None:
    with oai.responses.stream(
        model=SMOL,
        instructions=EXAMPLE,
        input="Create the file hello.txt containing the line Hello.",
        tools=[APPLY_PATCH],
        tool_choice={"type": "custom", "name": "apply_patch"},
        max_output_tokens=400,
        temperature=0,
    ) as stream:
        events = list(stream)
    kinds = {event.type for event in events}
    response = events[-1].response  # type: ignore[union-attr]
    assert response.status == "completed", [getattr(i, "input", None) for i in response.output]
    call = response.output[-1]
    assert isinstance(call, ResponseCustomToolCall)
    assert call.name == "apply_patch"
    assert PATCH_LANGUAGE.fullmatch(call.input), call.input
    assert {
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
    } <= kinds
