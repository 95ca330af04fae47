"""Schemathesis against the app's own OpenAPI on a real Hypercorn with fakes (reliability.md §8).

``--checks all`` except ``positive_data_acceptance``: several request fields are free-form in the
schema (Responses items, metadata, uploads) and checked in the services, which answer a precise
400 naming the ``param`` — "schema-valid but rejected" by design. Every other check (no 5xx,
documented statuses, content types, headers, response schemas, auth, 405 ``Allow``, stateful
use-after-free) must pass.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from egemma.runtime import Engines
from egemma.settings import Settings
from tests.conftest import TEST_KEY, make_settings
from tests.fakes.chat import FakeChatEngine, fake_engines
from tests.fakes.embeddings import FakeEmbeddingEngine
from tests.servers import LiveServer

pytestmark = pytest.mark.slow


def _cli() -> str:
    local = Path(sys.executable).with_name("schemathesis")
    found = str(local) if local.exists() else shutil.which("schemathesis")
    if not found:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    return found


@pytest.fixture
def settings() -> Settings:
    unlimited = "1000000"
    return make_settings(
        WORKBENCH_API_KEY=TEST_KEY,
        CHAT_RATE_LIMIT_CALLS=unlimited,
        EMBED_RATE_LIMIT_CALLS=unlimited,
        SUMMARIZE_RATE_LIMIT_CALLS=unlimited,
        CONVERSATION_RATE_LIMIT_CALLS=unlimited,
    )


@pytest.fixture
def engines() -> Engines:
    engines = fake_engines(FakeChatEngine("fake"), summary=True)
    engines.embedding = FakeEmbeddingEngine(dimension=32, matryoshka_dims=(32, 16))
    status = engines.capability("embeddings")
    status.status, status.name = "loaded", engines.embedding.name
    return engines


def test_openapi_holds_against_the_running_app(live_server: LiveServer, tmp_path: Path) -> None:
    cmd = [
        _cli(),
        "run",
        f"{live_server.base_url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--header",
        f"Authorization: Bearer {TEST_KEY}",
        "--max-examples",
        "10",
        "--seed",
        "1",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
    ]
    result = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
