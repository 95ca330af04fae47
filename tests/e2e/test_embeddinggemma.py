"""The real EmbeddingGemma-300m through ``egemma export-embeddings`` and a live server.

Assembled by ``../shared/models/embeddinggemma.sh`` (see ``tests/e2e/embeddinggemma.py``); skipped
with the reason when that cannot download. Compared with sentence-transformers on the same
weights: every task prompt, every Matryoshka size (truncate, then renormalise).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from egemma.app import create_app
from egemma.engines.onnx import FACTS_FILE
from tests.e2e import embeddinggemma
from tests.e2e.conftest import KEY, real_settings
from tests.servers import LiveServer

# The first test pays for the download (~370 MB) and the export; the loaded 2-core CI is slow.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# Short on purpose: sentence-transformers on PyTorch is the slow half of every comparison.
TEXTS = [
    "OK",
    "How do I reset my password if I no longer have access to my email?",
    "def add(a: int, b: int) -> int:\n    return a + b",
    "東京は日本の首都です。",
    "Embeddings map text to vectors so that similar meanings end up close together. " * 3,
]
MRL = (768, 512, 256, 128)


@pytest.fixture(scope="session")
def gemma_source() -> Path:
    try:
        return embeddinggemma.source_folder()
    except embeddinggemma.ModelUnavailableError as exc:
        pytest.skip(f"EmbeddingGemma-300m unavailable: {exc}")


@pytest.fixture(scope="session")
def gemma_onnx(gemma_source: Path) -> Path:
    return embeddinggemma.onnx_folder(gemma_source)


@pytest.fixture(scope="session")
def st_model(gemma_source: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gemma_source), device="cpu", local_files_only=True)


@pytest.fixture(scope="session")
def gemma_http(
    gemma_onnx: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    settings = real_settings(
        tmp_path_factory.mktemp("gemma-data"),
        EMBEDDING_ENABLED="true",
        EMBEDDING_MODEL_PATH=str(gemma_onnx),
        CHAT_MODEL_ENABLED="false",
        SUMMARY_LOCAL_ENABLED="false",
        EMBED_RATE_LIMIT_CALLS="100000",
    )
    server = LiveServer(create_app(settings), startup_timeout=300)
    server.start(timeout=300)
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=120) as client:
        yield client
    server.stop()


def _unit(rows: np.ndarray) -> np.ndarray:
    out: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def _vectors(client: httpx.Client, texts: list[str], **extra: Any) -> np.ndarray:
    r = client.post("/v1/embeddings", json={"input": texts, "model": "m", **extra})
    assert r.status_code == 200, r.text
    return np.asarray([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def test_export_facts(gemma_onnx: Path) -> None:
    facts = json.loads((gemma_onnx / FACTS_FILE).read_text())
    assert facts["architecture"] == "gemma3_text"
    assert facts["dimension"] == 768
    assert facts["matryoshka_dims"] == list(MRL)
    assert len(facts["prompts"]) == 14
    assert facts["check"]["min_cosine_fp32"] >= 0.9999


def test_every_prompt_and_size_matches_sentence_transformers(
    gemma_http: httpx.Client, st_model: Any
) -> None:
    worst = 1.0
    references: dict[str, np.ndarray] = {}  # 14 names share 8 prompt strings
    for name, prompt in st_model.prompts.items():
        if not prompt:
            continue
        if prompt not in references:
            references[prompt] = st_model.encode(
                TEXTS, prompt_name=name, convert_to_numpy=True, normalize_embeddings=True
            )
        reference = references[prompt]
        for size in MRL:
            ours = _vectors(gemma_http, TEXTS, prompt_name=name, dimensions=size)
            assert ours.shape == (len(TEXTS), size)
            cosines = (ours * _unit(reference[:, :size])).sum(axis=1)
            assert cosines.min() >= 0.9999, (name, size, cosines)
            worst = min(worst, float(cosines.min()))
    assert worst >= 0.9999


def test_embed_in_cognition_cli_shape(gemma_http: httpx.Client, st_model: Any) -> None:
    text = "export function add(a: number, b: number): number"
    r = gemma_http.post(
        "/embed?dimensions=768&prompt_name=Retrieval-document",
        files={"file": ("signature.txt", text.encode(), "text/plain")},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [k for k in body if k.startswith("embedding_")] == ["embedding_768d"]
    assert body["dimensions"] == 768  # cognition-cli's EmbedResponse fields
    assert body["model"]
    ours = np.asarray(body["embedding_768d"], dtype=np.float32)
    reference = st_model.encode(
        [text], prompt_name="Retrieval-document", normalize_embeddings=True
    )[0]
    assert float(ours @ reference) >= 0.9999


def test_rerank_puts_the_answer_first(gemma_http: httpx.Client) -> None:
    documents = [
        "The Eiffel Tower is in Paris and was finished in 1889.",
        "To reset your password, open Settings, choose Security and follow the emailed link.",
        "Sourdough needs a starter fed with flour and water.",
    ]
    r = gemma_http.post(
        "/v1/rerank",
        json={"query": "How can I change my password?", "documents": documents, "top_n": 2},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scorer"] == "embedding_cosine"
    assert [x["index"] for x in body["results"]][0] == 1
    assert len(body["results"]) == 2


def test_compact_formats_keep_the_neighbours(gemma_http: httpx.Client) -> None:
    floats = _vectors(gemma_http, TEXTS)
    ints = _vectors(gemma_http, TEXTS, encoding_format="int8")
    assert ints.dtype == np.float32
    assert (ints.astype(np.int64) == ints).all()
    cosines = (_unit(ints) * floats).sum(axis=1)
    assert cosines.min() >= 0.99, cosines
    bits = _vectors(gemma_http, TEXTS, encoding_format="ubinary").astype(np.uint8)
    assert bits.shape == (len(TEXTS), 96)
    np.testing.assert_array_equal(np.unpackbits(bits, axis=1), (floats > 0).astype(np.uint8))
