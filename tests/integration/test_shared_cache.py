"""Caches and rate limits shared through a real Redis (started by the tests), and fail-open when
Redis is away: two apps stand in for two replicas (each its own DATA_DIR)."""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis
from asgi_lifespan import LifespanManager

from egemma.app import create_app
from egemma.cache import TwoLevelCache
from egemma.runtime import CAPABILITIES, Engines
from egemma.settings import CacheSettings
from egemma.shared_cache import PREFIX, RedisLevel, pack, unpack
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.fakes.embeddings import FakeEmbeddingEngine
from tests.servers import free_port

pytestmark = pytest.mark.anyio


def _engines(fake: FakeEmbeddingEngine) -> Engines:
    engines = Engines(embedding=fake)
    status = engines.capability("embeddings")
    status.status, status.name = "loaded", fake.name
    for key in CAPABILITIES:  # nothing else configured: /ready may say 200
        if engines.capability(key).status == "not_loaded":
            engines.capability(key).status = "disabled"
    return engines


@asynccontextmanager
async def _replica(
    data: Path, fake: FakeEmbeddingEngine, **env: Any
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        WORKBENCH_API_KEY=TEST_KEY, DATA_DIR=str(data), EMBED_RATE_LIMIT_CALLS=1000, **env
    )
    app = create_app(settings, engines=_engines(fake))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://replica", headers=AUTH
        ) as http:
            yield http


async def _embed(http: httpx.AsyncClient, text: str) -> list[float]:
    resp = await http.post("/v1/embeddings", json={"input": text, "model": "fake-embedder"})
    assert resp.status_code == 200, resp.text
    vector: list[float] = resp.json()["data"][0]["embedding"]
    return vector


async def test_an_embedding_computed_on_one_replica_is_a_hit_on_the_other(
    tmp_path: Path, redis_url: str
) -> None:
    a, b = FakeEmbeddingEngine(), FakeEmbeddingEngine()
    async with (
        _replica(tmp_path / "a", a, CACHE_URL=redis_url) as ra,
        _replica(tmp_path / "b", b, CACHE_URL=redis_url) as rb,
    ):
        first = await _embed(ra, "shared text")
        for _ in range(100):  # write-behind: replica A flushes to Redis within a moment
            if redis.Redis.from_url(redis_url).keys(PREFIX + "embeddings:*"):
                break
            await anyio.sleep(0.05)
        second = await _embed(rb, "shared text")
        assert second == first
        assert a.texts_encoded == 1
        assert b.texts_encoded == 0  # served from Redis, never computed on B
        health = (await rb.get("/health")).json()
        assert health["redis"]["cache"] == {"status": "ok"}
        ready = await rb.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["redis"]["status"] == "ok"
    # Nothing was written to either replica's disk cache.
    assert not (tmp_path / "a" / "cache" / "embeddings").exists()


async def test_redis_away_is_served_uncached_and_counted(tmp_path: Path) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    fake = FakeEmbeddingEngine()
    async with _replica(
        tmp_path / "a",
        fake,
        CACHE_URL=nowhere,
        CACHE_TIMEOUT="0.2",
        RATE_LIMIT_STORAGE_URI=f"async+{nowhere}",
    ) as http:
        assert len(await _embed(http, "x")) == fake.dimension
        assert len(await _embed(http, "y")) == fake.dimension  # within the rest: no new wait
        metrics = (await http.get("/metrics")).text
        assert 'egemma_cache_errors_total{cache="embeddings"}' in metrics
        errors = [
            line
            for line in metrics.splitlines()
            if line.startswith('egemma_cache_errors_total{cache="embeddings"}')
        ]
        assert float(errors[0].split()[-1]) >= 1
        health = (await http.get("/health")).json()
        assert health["status"] == "degraded"
        assert health["redis"]["cache"]["status"] == "error"
        assert health["redis"]["rate_limits"]["status"] == "error"
        ready = await http.get("/ready")
        assert ready.status_code == 200  # fail-open: a missing Redis never makes it unready
        assert ready.json()["redis"]["status"] == "error"


async def test_rate_limit_buckets_are_shared_between_replicas(
    tmp_path: Path, redis_url: str
) -> None:
    env = {
        "RATE_LIMIT_STORAGE_URI": "async+" + redis_url,
        "CONVERSATION_RATE_LIMIT_CALLS": "3",
        "CONVERSATION_RATE_LIMIT_SECONDS": "60",
    }
    fake = FakeEmbeddingEngine()
    async with (
        _replica(tmp_path / "a", fake, **env) as ra,
        _replica(tmp_path / "b", fake, **env) as rb,
    ):
        assert (await ra.post("/v1/conversations", json={})).status_code == 200
        assert (await rb.post("/v1/conversations", json={})).status_code == 200
        assert (await ra.post("/v1/conversations", json={})).status_code == 200
        over = await rb.post("/v1/conversations", json={})
        assert over.status_code == 429
        assert int(over.headers["retry-after"]) >= 1


def test_values_round_trip_as_json_and_garbage_is_a_miss(redis_url: str) -> None:
    settings = CacheSettings(url=redis_url)
    one = TwoLevelCache("summaries", None, 16, shared=RedisLevel("summaries", settings))
    two = TwoLevelCache("summaries", None, 16, shared=RedisLevel("summaries", settings))
    value = {"summary": "s", "model": "m", "chunks": 2}
    one.set("k1", value)
    assert two.get("k1") == value
    assert unpack(pack((3, b"\x00\xff"))) == (3, b"\x00\xff")
    assert unpack(pack({"$b": "not bytes"})) == {"$b": "not bytes"}
    raw = redis.Redis.from_url(redis_url)
    # A pickle planted in Redis is never unpickled: it is a miss.
    raw.set(PREFIX + "summaries:k2", pickle.dumps(value))
    assert two.get("k2") is None
    assert two.errors == 0
    one.close()
    two.close()
