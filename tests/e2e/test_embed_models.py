"""Real models end to end: the shipped all-MiniLM-L6-v2 and a tiny random-weight model with
EmbeddingGemma's architecture, both exported with ``egemma export-embeddings`` at test time.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from egemma.app import create_app
from egemma.engines.onnx import FACTS_FILE, OnnxEmbeddingEngine
from egemma.settings import EmbeddingSettings
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.fakes.embedding_models import (
    GEMMA_PROMPTS,
    TINY_DIM,
    TINY_MRL,
    build_minilm_onnx,
    build_tiny_gemma,
    build_tiny_gemma_onnx,
    minilm_source,
)
from tests.servers import LiveServer

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SENTENCES = [
    "OK",
    "Hmm...",
    "A man is playing a guitar on the stage.",
    "The central bank raised interest rates by a quarter point on Wednesday.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "Le chat dort sur le canapé depuis ce matin.",
    "Москва — столица России.",
    "🙂 emoji and symbols: ±∞ ≠ ≈",
    "SELECT count(*) FROM orders WHERE status = 'shipped' GROUP BY region;",
    "Photosynthesis converts light energy into chemical energy stored in glucose. " * 25,
    "https://example.com/path?query=1&other=two#fragment",
    "1234567890",
    "Why is the sky blue? Rayleigh scattering of sunlight by the atmosphere.",
    "   leading and trailing spaces   ",
]


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_minilm_onnx(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_gemma_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gemma_onnx(tmp_path_factory)


def _engine(path: Path) -> OnnxEmbeddingEngine:
    return OnnxEmbeddingEngine.load(path, EmbeddingSettings(_env_file=None))  # type: ignore[call-arg]


def _settings(model: Path, **env: object) -> object:
    return make_settings(
        WORKBENCH_API_KEY=TEST_KEY,
        EMBEDDING_MODEL_PATH=str(model),
        CHAT_MODEL_ENABLED="false",
        SUMMARY_LOCAL_ENABLED="false",
        EMBED_RATE_LIMIT_CALLS=100_000,
        **env,
    )


@pytest.fixture
async def gemma_client(tiny_gemma_onnx: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(_settings(tiny_gemma_onnx))  # type: ignore[arg-type]
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


@pytest.fixture
def minilm_server(minilm_onnx: Path) -> Iterator[LiveServer]:
    server = LiveServer(create_app(_settings(minilm_onnx)))  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_minilm_export_facts(minilm_onnx: Path) -> None:
    facts = json.loads((minilm_onnx / FACTS_FILE).read_text())
    assert facts["dimension"] == 384
    assert facts["max_seq_length"] == 256
    assert facts["pooling"] == "mean"
    assert facts["prompts"] == {}
    assert facts["matryoshka_dims"] == []
    assert len(facts["source_sha256"]) == 64
    assert facts["check"]["min_cosine_fp32"] >= 0.9999


def test_onnx_matches_sentence_transformers(minilm_onnx: Path) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_source()), device="cpu").encode(
        SENTENCES, normalize_embeddings=True
    )
    engine = _engine(minilm_onnx)
    try:
        ours, counts = engine.encode(SENTENCES)
    finally:
        engine.close()
    cosines = (ours * reference).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines
    assert max(counts) == 256  # the long text is truncated at the real maximum, not 128


def test_batched_equals_single(minilm_onnx: Path) -> None:
    engine = _engine(minilm_onnx)
    try:
        together, _ = engine.encode(SENTENCES)
        alone = np.stack([engine.encode([s])[0][0] for s in SENTENCES])
    finally:
        engine.close()
    np.testing.assert_allclose(together, alone, atol=2e-5)


def test_tiny_gemma_matches_sentence_transformers_with_prompts(
    tiny_gemma_onnx: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from sentence_transformers import SentenceTransformer

    src = build_tiny_gemma(tmp_path_factory.getbasetemp() / "embedding-models" / "tiny-gemma")
    st = SentenceTransformer(str(src), device="cpu")
    texts = ["how do I reset my password", "the quick brown fox", "hello"]
    reference = st.encode(texts, prompt_name="query", normalize_embeddings=True)
    engine = _engine(tiny_gemma_onnx)
    try:
        assert engine.prompts == GEMMA_PROMPTS
        assert engine.matryoshka_dims == TINY_MRL
        ours, _ = engine.encode([GEMMA_PROMPTS["query"] + t for t in texts])
    finally:
        engine.close()
    assert ((ours * reference).sum(axis=1)).min() >= 0.9999


async def test_tiny_gemma_served_end_to_end(gemma_client: httpx.AsyncClient) -> None:
    health = (await gemma_client.get("/health")).json()
    assert health["embedding_model"]["status"] == "loaded"
    r = await gemma_client.post(
        "/embed", files={"file": ("doc.txt", b"the quick brown fox")}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [k for k in body if k.startswith("embedding_")] == [f"embedding_{min(TINY_MRL)}d"]
    assert body["dimensions"] == TINY_DIM
    r = await gemma_client.post(
        f"/embed?dimensions={TINY_DIM}&dimensions=32&prompt_name=Retrieval-query",
        files={"file": ("q.txt", b"the quick brown fox")},
        headers=AUTH,
    )
    body = r.json()
    full = np.asarray(body[f"embedding_{TINY_DIM}d"])
    cut = np.asarray(body["embedding_32d"])
    assert full.shape == (TINY_DIM,)
    assert cut.shape == (32,)
    np.testing.assert_allclose([np.linalg.norm(full), np.linalg.norm(cut)], 1.0, rtol=1e-5)
    np.testing.assert_allclose(cut, full[:32] / np.linalg.norm(full[:32]), atol=1e-6)
    # Prompts change the vector; a title fills the document slot.
    r = await gemma_client.post(
        "/v1/embeddings",
        json={"input": "the quick brown fox", "model": "m", "prompt_name": "document"},
        headers=AUTH,
    )
    doc = np.asarray(r.json()["data"][0]["embedding"])
    assert float(doc @ full) < 0.99999
    # Above the model's own size the original's sizes are the vector zero-padded; beyond 768, 400.
    r = await gemma_client.post(
        f"/embed?dimensions={TINY_DIM + 1}", files={"file": ("q.txt", b"x")}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    assert r.json()[f"embedding_{TINY_DIM + 1}d"][-1] == 0.0
    r = await gemma_client.post(
        "/embed?dimensions=769", files={"file": ("q.txt", b"x")}, headers=AUTH
    )
    assert r.status_code == 400
    r = await gemma_client.post(
        "/embed?prompt_name=search", files={"file": ("q.txt", b"x")}, headers=AUTH
    )
    assert r.status_code == 400
    assert "Retrieval-document" in r.json()["error"]["message"]


async def test_concurrent_http_requests_match_single_ones(minilm_onnx: Path) -> None:
    app = create_app(_settings(minilm_onnx, CACHE_MAX_SIZE=0, EMBEDDING_DISK_CACHE_BYTES=0))  # type: ignore[arg-type]
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:

            async def one(text: str) -> np.ndarray:
                r = await http.post("/v1/embeddings", json={"input": text}, headers=AUTH)
                assert r.status_code == 200, r.text
                return np.asarray(r.json()["data"][0]["embedding"])

            concurrent = await asyncio.gather(*(one(s) for s in SENTENCES * 2))
            sequential = [await one(s) for s in SENTENCES]
        batcher = app.state.egemma.services.embeddings.batcher
    assert batcher.runs < len(SENTENCES) * 3  # some requests shared a run
    for got, want in zip(concurrent, sequential * 2, strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_openai_client_base64_default_against_hypercorn(minilm_server: LiveServer) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{minilm_server.base_url}/v1", api_key=TEST_KEY)
    default = client.embeddings.create(model="all-MiniLM-L6-v2", input=["hello", "world"])
    assert [len(d.embedding) for d in default.data] == [384, 384]
    assert default.usage.prompt_tokens > 0
    floats = client.embeddings.create(
        model="all-MiniLM-L6-v2", input="hello", encoding_format="float"
    )
    np.testing.assert_allclose(default.data[0].embedding, floats.data[0].embedding, atol=1e-6)
    short = client.embeddings.create(model="all-MiniLM-L6-v2", input="hello", dimensions=128)
    assert len(short.data[0].embedding) == 128
    np.testing.assert_allclose(np.linalg.norm(short.data[0].embedding), 1.0, rtol=1e-5)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="all-MiniLM-L6-v2", input="hello", dimensions=385)
    raw = httpx.post(
        f"{minilm_server.base_url}/embed?dimensions=384",
        files={"file": ("signature.txt", b"hello")},
        headers=AUTH,
    )
    assert raw.status_code == 200
    vec = np.asarray(raw.json()["embedding_384d"])
    np.testing.assert_allclose(vec, default.data[0].embedding, atol=1e-5)


async def test_real_cache_hit_after_restart(minilm_onnx: Path) -> None:
    async def embed_once() -> tuple[list[float], int]:
        app = create_app(_settings(minilm_onnx))  # type: ignore[arg-type]
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                r = await http.post("/v1/embeddings", json={"input": "remember me"}, headers=AUTH)
            runs: int = app.state.egemma.services.embeddings.batcher.runs
        return r.json()["data"][0]["embedding"], runs

    first, runs_first = await embed_once()
    second, runs_second = await embed_once()
    assert (runs_first, runs_second) == (1, 0)
    assert first == second


def test_export_cli_int8_gate_is_reported(
    tiny_gemma_onnx: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from egemma.__main__ import main

    src = build_tiny_gemma(tmp_path_factory.getbasetemp() / "embedding-models" / "tiny-gemma")
    dest = tmp_path / "int8"
    assert main(["export-embeddings", str(src), str(dest), "--int8", "--min-cosine", "0"]) == 0
    facts = json.loads((dest / FACTS_FILE).read_text())
    assert facts["quantization"] == "int8-per-channel"
    assert 0.0 < facts["check"]["min_cosine_int8"] <= 1.0001
    engine = _engine(dest)
    try:
        vectors, _ = engine.encode(["hello"])
    finally:
        engine.close()
    assert vectors.shape == (1, TINY_DIM)
    strict = tmp_path / "strict"
    assert main(["export-embeddings", str(src), str(strict), "--int8", "--min-cosine", "1.01"]) == 0
    assert json.loads((strict / FACTS_FILE).read_text())["quantization"] == "fp32"
    assert main(["export-embeddings", str(src), str(strict)]) == 1  # exists without --force


def test_base64_is_little_endian_float32(minilm_onnx: Path) -> None:
    engine = _engine(minilm_onnx)
    try:
        vec, _ = engine.encode(["hello"])
    finally:
        engine.close()
    encoded = base64.b64encode(vec[0].astype("<f4").tobytes())
    assert np.frombuffer(base64.b64decode(encoded), dtype="<f4").shape == (384,)


def test_prepare_models_skips_a_current_export(minilm_onnx: Path, tmp_path: Path) -> None:
    from egemma.export import export_is_current, prepare_default
    from egemma.modelfiles import MINILM_ONNX_DIR

    assert export_is_current(minilm_source(), minilm_onnx)
    target = tmp_path / MINILM_ONNX_DIR
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(minilm_onnx, target_is_directory=True)
    assert prepare_default(tmp_path) == target  # current: no second export


async def test_broken_model_folder_is_a_capability_error(tmp_path: Path) -> None:
    (tmp_path / "not-exported").mkdir()
    app = create_app(_settings(tmp_path / "not-exported"))  # type: ignore[arg-type]
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            health = (await http.get("/health")).json()["embedding_model"]
            r = await http.post("/v1/embeddings", json={"input": "x"}, headers=AUTH)
            ready = await http.get("/ready")
    assert health["status"] == "error"
    assert "egemma export-embeddings" in health["reason"]
    assert r.status_code == 503
    assert ready.status_code == 503


def test_plain_hugging_face_folder_exports_with_mean_pooling(
    tiny_gemma_onnx: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from egemma.export import ExportOptions, export_embeddings

    hf = tmp_path_factory.getbasetemp() / "embedding-models" / "tiny-gemma-hf"
    facts = export_embeddings(hf, tmp_path / "hf-onnx", ExportOptions(name="plain"))
    assert facts["pooling"] == "mean"
    assert facts["check"]["min_cosine_fp32"] >= 0.9999
