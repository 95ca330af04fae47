"""cognition-cli's requests against the real server with the shipped models: SmolLM2 answers a
summary that names a Gemini model (no Gemini key here), all-MiniLM-L6-v2 answers ``/embed`` at
the 768 dimensions cognition-cli always asks for. The tiny model's text is not judged."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from egemma.app import create_app
from tests.conftest import TEST_KEY, make_settings
from tests.fakes.embedding_models import build_minilm_onnx
from tests.servers import LiveServer

pytestmark = [pytest.mark.slow]

BEARER = {"Authorization": f"Bearer {TEST_KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = make_settings(
        WORKBENCH_API_KEY=TEST_KEY,
        DATA_DIR=tmp_path_factory.mktemp(
            "cognition-e2e-data"
        ),  # module scope: before the autouse one
        EMBEDDING_MODEL_PATH=str(build_minilm_onnx(tmp_path_factory)),
        CHAT_N_CTX=1024,
        SUMMARIZE_RATE_LIMIT_CALLS=100,
        EMBED_RATE_LIMIT_CALLS=100,
    )
    live = LiveServer(create_app(settings))
    live.start(timeout=300)
    yield live
    live.stop()


def test_tool_output_summary_named_gemini_is_answered_locally(server: LiveServer) -> None:
    # tool-helpers.ts: tool_output_summarizer, DEFAULT_SUMMARIZER_MODEL_NAME, 8192 tokens.
    output = "".join(f"test_{i} PASSED\n" for i in range(40)) + "test_41 FAILED: KeyError 'id'\n"
    r = httpx.post(
        f"{server.base_url}/summarize",
        files={"file": ("tool_output.txt", output.encode(), "text/plain")},
        data={
            "persona": "tool_output_summarizer",
            "goal": "Which tests failed?",
            "model_name": "gemini-3-flash-preview",
            "max_tokens": "8192",
        },
        headers=BEARER,
        timeout=300,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "smollm2-135m-instruct"
    assert isinstance(body["summary"], str)
    assert body["summary"].strip()


def test_embed_768_from_the_384_dimension_model(server: LiveServer) -> None:
    def embed(text: str) -> dict:
        r = httpx.post(
            f"{server.base_url}/embed?dimensions=768&prompt_name=Retrieval-document",
            files={"file": ("signature.txt", text.encode(), "text/plain")},
            headers=BEARER,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        return r.json()

    a = embed("Validates JWT tokens ensuring secure authentication")
    b = embed("Checks that a login token is genuine")
    c = embed("Renders the shopping cart as an HTML table")
    assert (a["model"], a["dimensions"]) == ("all-MiniLM-L6-v2", 384)
    va, vb, vc = (np.asarray(x["embedding_768d"]) for x in (a, b, c))
    assert va.shape == (768,)
    assert not va[384:].any()
    np.testing.assert_allclose(np.linalg.norm(va), 1.0, rtol=1e-5)
    assert va @ vb > va @ vc  # the padded vectors keep the model's similarities
