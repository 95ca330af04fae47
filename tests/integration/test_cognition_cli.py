"""cognition-cli's ``WorkbenchClient`` (mirzahusadzic/cogx, src/cognition-cli/src/core/executors/
workbench-client.ts) against the real server on 127.0.0.1, with fakes for the models.

The requests are the client's own: multipart ``file`` parts typed ``text/plain`` (``text/x-python``
for /parse-ast), form values as strings (``enable_safety`` is ``"true"``/``"false"``), a Gemini
model name on every summary, ``/embed?dimensions=768&prompt_name=Retrieval-document`` with the
signature in ``signature.txt``, and ``GET /rate-limits`` without a key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from egemma.app import create_app
from egemma.runtime import CapabilityStatus
from tests.conftest import TEST_KEY, make_settings
from tests.fakes.chat import FakeChatEngine, fake_engines
from tests.fakes.embedding_models import GEMMA_PROMPTS
from tests.fakes.embeddings import FakeEmbeddingEngine
from tests.servers import LiveServer

BEARER = {"Authorization": f"Bearer {TEST_KEY}"}
SLM = "gemini-3-flash-preview"  # DEFAULT_SLM_MODEL_NAME
OPSEC = "gemini-3.1-pro-preview"  # DEFAULT_OPSEC_MODEL_NAME
STRUCTURAL = (
    '{"language": "TypeScript", "docstring": "", "imports": [], "classes": [], "functions": []}'
)


@pytest.fixture(scope="module")
def chat() -> FakeChatEngine:
    return FakeChatEngine("smollm2-135m-instruct", script=STRUCTURAL, n_ctx=8192)


@pytest.fixture(scope="module")
def embedder() -> FakeEmbeddingEngine:
    return FakeEmbeddingEngine(dimension=64, prompts=GEMMA_PROMPTS, matryoshka_dims=(64, 32))


@pytest.fixture(scope="module")
def server(
    chat: FakeChatEngine, embedder: FakeEmbeddingEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    engines = fake_engines(chat, summary=True)
    engines.embedding = embedder
    engines.status["embeddings"] = CapabilityStatus(name=embedder.name, status="loaded")
    # Module scope runs before the autouse DATA_DIR fixture: give the server its own folder.
    settings = make_settings(
        WORKBENCH_API_KEY=TEST_KEY,
        DATA_DIR=tmp_path_factory.mktemp("cognition-data"),
        SUMMARIZE_RATE_LIMIT_CALLS=1000,
        EMBED_RATE_LIMIT_CALLS=1000,
    )
    live = LiveServer(create_app(settings, engines=engines))
    live.start()
    yield live
    live.stop()


def _summarize(server: LiveServer, content: str, filename: str, **form: str) -> httpx.Response:
    files = {"file": (filename, content.encode(), "text/plain")}
    return httpx.post(
        f"{server.base_url}/summarize", files=files, data=form, headers=BEARER, timeout=60
    )


def test_rate_limits_and_health_need_no_key(server: LiveServer) -> None:
    limits = httpx.get(f"{server.base_url}/rate-limits").json()
    assert limits["embed"]["calls"] == 1000
    assert isinstance(limits["summarize"]["seconds"], int)
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_ast_analyst_summary_on_a_box_without_gemini(
    server: LiveServer, chat: FakeChatEngine, caplog: pytest.LogCaptureFixture
) -> None:
    # SLMExtractor.extract: ast_analyst, DEFAULT_SLM_MODEL_NAME, 8192 tokens, temperature 0.1.
    with caplog.at_level(logging.INFO, logger="egemma.services.summarize.service"):
        r = _summarize(
            server,
            "export function add(a: number, b: number): number { return a + b; }\n",
            "math.ts",
            persona="ast_analyst",
            model_name=SLM,
            max_tokens="8192",
            temperature="0.1",
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["language"] == "TypeScript"
    assert body["model"] == chat.name  # says who answered: the local model, not Gemini
    assert body["summary"] == STRUCTURAL
    assert f"summary asked for {SLM}" in caplog.text
    # Gemini's 8192-token budget was capped to a quarter of the local context.
    assert chat.requests[-1].params.max_tokens == 8192 // 4


@pytest.mark.parametrize(
    ("persona", "filename", "model"),
    [
        ("mathematical_validator", "PROOFS.md", OPSEC),
        ("security_validator", "VISION.md", OPSEC),
        ("operational_validator", "OPERATIONAL.md", OPSEC),
        ("security_meta_validator", "SECURITY.md", OPSEC),
        ("query_analyst", "query.md", SLM),
        ("knowledge_assistant", "answer.md", SLM),
        ("conversation_memory_assistant", "memory.md", SLM),
        ("tool_output_summarizer", "tool_output.txt", SLM),
        ("parser_generator", "sample.py", SLM),
    ],
)
def test_every_persona_cognition_cli_sends(
    server: LiveServer, persona: str, filename: str, model: str
) -> None:
    r = _summarize(
        server,
        "# Title\n\nSome content to look at.\n",
        filename,
        persona=persona,
        goal="what matters here",
        model_name=model,
        max_tokens="2048",
        enable_safety="false",
    )
    assert r.status_code == 200, r.text
    assert {"language", "summary"} <= set(r.json())


def test_embed_768_as_cognition_cli_reads_it(
    server: LiveServer, embedder: FakeEmbeddingEngine
) -> None:
    signature = "AuthHandler.validateToken(token: string): Promise<boolean>"
    r = httpx.post(
        f"{server.base_url}/embed?dimensions=768&prompt_name=Retrieval-document",
        files={"file": ("signature.txt", signature.encode(), "text/plain")},
        headers=BEARER,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    # types/workbench.ts EmbedResponse: model (string), dimensions (number), embedding_768d.
    assert isinstance(body["model"], str)
    assert body["model"] == embedder.name
    assert body["dimensions"] == 64
    vector = np.asarray(body["embedding_768d"])
    assert vector.shape == (768,)
    expected = embedder.vector(GEMMA_PROMPTS["Retrieval-document"] + signature)
    np.testing.assert_allclose(vector[:64], expected, rtol=1e-5)


def test_parse_ast_as_cognition_cli_sends_it(server: LiveServer) -> None:
    source = b"def add(a: int, b: int) -> int:\n    return a + b\n"
    r = httpx.post(
        f"{server.base_url}/parse-ast",
        files={"file": ("tools.py", source, "text/x-python")},
        data={"language": "python"},
        headers=BEARER,
    )
    assert r.status_code == 200, r.text
    assert [f["name"] for f in r.json()["functions"]] == ["add"]
