"""Shared fixtures: a clean environment per test, settings builders, the app in-process and on a
real Hypercorn on 127.0.0.1. Tests are marked by directory (unit / integration / e2e).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from egemma.app import create_app
from egemma.runtime import Engines
from egemma.settings import GROUPS, Settings, env_name
from tests.servers import LiveServer

TEST_KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}

_SETTING_VARS = {env_name(cls, name) for cls in GROUPS.values() for name in cls.model_fields} | {
    "WORKBENCH_API_KEY",
    "FORCE_CPU",
    "CACHE_MAX_SIZE",
    "PERSONAS_DIR",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for kind in ("unit", "integration", "e2e"):
            if kind in parts:
                item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No setting leaks in from the developer's shell; DATA_DIR is a fresh folder."""
    for name in list(os.environ):
        if name.upper() in _SETTING_VARS:
            monkeypatch.delenv(name)
    data = tmp_path / "data"
    monkeypatch.setenv("DATA_DIR", str(data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    return data


def make_settings(**env: Any) -> Settings:
    """Settings from the (cleaned) environment plus ``env`` overrides, ignoring any .env file."""
    old = {k: os.environ.get(k) for k in env}
    try:
        os.environ.update({k: str(v) for k, v in env.items()})
        return Settings(env_file=None)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def settings() -> Settings:
    return make_settings(WORKBENCH_API_KEY=TEST_KEY)


@pytest.fixture
def engines() -> Engines:
    """No engines loaded: capability routes answer 503 unless a test injects fakes."""
    return Engines()


@pytest.fixture
async def client(settings: Settings, engines: Engines) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, engines=engines)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def live_server(settings: Settings, engines: Engines) -> Iterator[LiveServer]:
    """The app on a real Hypercorn on 127.0.0.1 (a thread with its own event loop)."""
    server = LiveServer(create_app(settings, engines=engines))
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- real PostgreSQL and Redis (tests/backing.py) -------------------------------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster for the session (skips only when not installed)."""
    from tests.backing import postgres_bin, start_postgres

    if postgres_bin() is None:
        pytest.skip(
            "PostgreSQL binaries (initdb, pg_ctl) not installed: apt-get install postgresql"
        )
    cluster = start_postgres()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def postgres_url(pg_cluster: Any) -> str:
    """A fresh, empty database on the session cluster."""
    url: str = pg_cluster.new_database()
    return url


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    from tests.backing import RedisServer, redis_binary

    binary = redis_binary()
    if binary is None:
        pytest.skip("redis-server not installed: apt-get install redis-server")
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """The session Redis, emptied for this test."""
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    url: str = redis_server.url
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings that select each store in turn: the same tests run on SQLite and PostgreSQL."""
    if request.param == "sqlite":
        return {}
    return {"STORE_URL": request.getfixturevalue("postgres_url")}
