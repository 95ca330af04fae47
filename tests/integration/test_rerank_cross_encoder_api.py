"""/v1/rerank with a cross-encoder injected (a fake): scorer flag, order, ties, limits; the
embedding model is not needed. The real ONNX path is tests/e2e/test_rerank_cross_encoder.py."""

from __future__ import annotations

import httpx
import pytest

from egemma.runtime import Engines
from egemma.settings import Settings
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.fakes.reranker import FakeRerankEngine

pytestmark = pytest.mark.anyio

TABLE = {"a": 1.5, "b": -0.5, "c": 1.5, "d": 3.0}


@pytest.fixture
def settings() -> Settings:
    return make_settings(
        WORKBENCH_API_KEY=TEST_KEY, EMBED_RATE_LIMIT_CALLS=1000, RERANK_MAX_REQUEST_CHARS=100
    )


@pytest.fixture
def fake() -> FakeRerankEngine:
    return FakeRerankEngine(TABLE)


@pytest.fixture
def engines(fake: FakeRerankEngine) -> Engines:
    engines = Engines(reranker=fake)
    status = engines.capability("rerank")
    status.status, status.name = "loaded", fake.name
    return engines


async def test_cross_encoder_scores_order_and_ties(
    client: httpx.AsyncClient, fake: FakeRerankEngine
) -> None:
    r = await client.post(
        "/v1/rerank", json={"query": "q", "documents": ["a", "b", "c", "d"]}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scorer"] == "cross_encoder"
    assert body["model"] == fake.name
    # Ties (a and c) keep request order.
    assert [x["index"] for x in body["results"]] == [3, 0, 2, 1]
    assert [x["relevance_score"] for x in body["results"]] == [3.0, 1.5, 1.5, -0.5]
    assert fake.calls == [("q", ["a", "b", "c", "d"])]  # one engine call per request
    assert body["usage"]["total_tokens"] == 4 * (1 + 1 + 3)


async def test_too_many_characters_is_a_400(
    client: httpx.AsyncClient, fake: FakeRerankEngine
) -> None:
    r = await client.post(
        "/v1/rerank", json={"query": "q" * 30, "documents": ["a", "b", "c", "d"]}, headers=AUTH
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "too_many_inputs"
    assert "RERANK_MAX_REQUEST_CHARS" in error["message"]
    assert fake.calls == []


async def test_health_lists_the_reranker(client: httpx.AsyncClient) -> None:
    health = (await client.get("/health")).json()
    assert health["rerank_model"]["status"] == "loaded"


async def test_without_a_reranker_health_has_no_entry(settings: Settings) -> None:
    from asgi_lifespan import LifespanManager

    from egemma.app import create_app

    app = create_app(settings, engines=Engines())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            health = (await http.get("/health")).json()
            r = await http.post("/v1/rerank", json={"query": "q", "documents": ["a"]}, headers=AUTH)
    assert "rerank_model" not in health
    assert r.status_code == 503  # cosine needs the embedding model, which is not loaded
    assert "embedding model" in r.json()["error"]["message"]
