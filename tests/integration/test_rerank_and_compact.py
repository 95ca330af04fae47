"""/v1/rerank and the compact ``encoding_format`` values, through the app with a fake engine."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from egemma.runtime import Engines
from egemma.services.embeddings.compact import compact, hamming_similarity, to_bits, to_int8
from egemma.settings import Settings
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.fakes.embedding_models import GEMMA_PROMPTS
from tests.fakes.embeddings import FakeEmbeddingEngine

pytestmark = pytest.mark.anyio

DOCS = ["alpha beta", "gamma", "delta epsilon zeta", "eta"]


@pytest.fixture
def settings() -> Settings:
    return make_settings(WORKBENCH_API_KEY=TEST_KEY, EMBED_RATE_LIMIT_CALLS=1000)


@pytest.fixture
def fake() -> FakeEmbeddingEngine:
    return FakeEmbeddingEngine(dimension=64, prompts=GEMMA_PROMPTS, matryoshka_dims=(64, 32, 16))


@pytest.fixture
def engines(fake: FakeEmbeddingEngine) -> Engines:
    engines = Engines(embedding=fake)
    status = engines.capability("embeddings")
    status.status, status.name = "loaded", fake.name
    return engines


async def _floats(client: httpx.AsyncClient, text: str, **extra: object) -> np.ndarray:
    r = await client.post("/v1/embeddings", json={"input": text, **extra}, headers=AUTH)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["data"][0]["embedding"], dtype=np.float32)


async def test_rerank_orders_by_cosine_with_the_task_prompts(
    client: httpx.AsyncClient, fake: FakeEmbeddingEngine
) -> None:
    r = await client.post(
        "/v1/rerank",
        json={"model": "any", "query": "q", "documents": [DOCS[0], {"text": DOCS[1]}, *DOCS[2:]]},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scorer"] == "embedding_cosine"
    assert body["id"].startswith("rerank_")
    assert body["model"] == fake.name
    q = fake.vector(GEMMA_PROMPTS["Retrieval-query"] + "q")
    expected = [float(fake.vector(GEMMA_PROMPTS["Retrieval-document"] + d) @ q) for d in DOCS]
    results = body["results"]
    assert [x["index"] for x in results] == sorted(range(4), key=lambda i: -expected[i])
    for x in results:
        assert x["relevance_score"] == pytest.approx(expected[x["index"]], abs=1e-5)
        assert x["document"] == {"text": DOCS[x["index"]]}
    assert body["usage"]["total_tokens"] > 0


async def test_rerank_top_n_and_no_documents(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/rerank",
        json={"query": "q", "documents": DOCS, "top_n": 2, "return_documents": False},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert all(x.get("document") is None for x in results)


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"query": "q", "documents": []}, "documents"),
        ({"query": " ", "documents": ["a"]}, "query"),
        ({"query": "q", "documents": ["a", ""]}, "documents[1]"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, None),
        ({"query": "q", "documents": "a"}, None),
        ({"query": 3, "documents": ["a"]}, None),
        ({"documents": ["a"]}, None),
        ({"query": "q", "documents": ["a"], "return_documents": "yes"}, None),
    ],
)
async def test_rerank_bad_input_is_an_openai_error(
    client: httpx.AsyncClient, payload: dict, param: str | None
) -> None:
    r = await client.post("/v1/rerank", json=payload, headers=AUTH)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param


async def test_rerank_needs_the_key(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
    assert r.status_code == 401


async def test_int8_and_uint8_keep_the_direction(client: httpx.AsyncClient) -> None:
    floats = await _floats(client, "some text", dimensions=32)
    for fmt, offset in (("int8", 0), ("uint8", 128)):
        r = await client.post(
            "/v1/embeddings",
            json={"input": "some text", "encoding_format": fmt, "dimensions": 32},
            headers=AUTH,
        )
        assert r.status_code == 200, r.text
        values = np.asarray(r.json()["data"][0]["embedding"])
        assert values.shape == (32,)
        assert values.min() >= offset - 128
        assert values.max() <= offset + 127
        assert np.abs(values - offset).max() == 127
        ints = (values - offset).astype(np.float32)
        cosine = float(ints @ floats / np.linalg.norm(ints))
        assert cosine > 0.999


async def test_binary_and_ubinary_pack_the_sign_bits(client: httpx.AsyncClient) -> None:
    floats = await _floats(client, "more text")
    answers = {}
    for fmt in ("binary", "ubinary"):
        r = await client.post(
            "/v1/embeddings", json={"input": "more text", "encoding_format": fmt}, headers=AUTH
        )
        assert r.status_code == 200, r.text
        answers[fmt] = np.asarray(r.json()["data"][0]["embedding"])
    assert answers["ubinary"].shape == (8,)  # 64 bits
    np.testing.assert_array_equal(answers["binary"] + 128, answers["ubinary"])
    bits = np.unpackbits(answers["ubinary"].astype(np.uint8))
    np.testing.assert_array_equal(bits, (floats > 0).astype(np.uint8))


def test_compact_helpers() -> None:
    rng = np.random.default_rng(0)
    v = rng.standard_normal((3, 20)).astype(np.float32)
    assert to_bits(v).shape == (3, 3)  # 20 bits → 3 bytes, the last one padded
    assert np.abs(to_int8(v)).max(axis=1).tolist() == [127, 127, 127]
    bits = to_bits(v)
    sims = hamming_similarity(bits[0], bits)
    assert sims[0] == 24 and sims.max() == 24  # noqa: PT018
    with pytest.raises(ValueError, match="compact"):
        compact(v, "int4")
