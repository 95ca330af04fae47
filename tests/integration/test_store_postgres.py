"""What only the PostgreSQL store has: its schema_version table, replicas migrating together,
and a server that is not there (503 + Retry-After, a public reason without host or password)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from egemma.store.base import StoreUnavailableError
from egemma.store.migrations import LATEST
from egemma.store.postgres import PostgresStore
from tests.servers import free_port

pytestmark = pytest.mark.anyio


async def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    stores = [PostgresStore(postgres_url, busy_timeout=10) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    for s in stores:
        assert s.health().status == "ok"
        await s.close()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(LATEST,)]


async def test_a_newer_schema_is_refused_and_left_alone(postgres_url: str) -> None:
    first = PostgresStore(postgres_url)
    await first.open()
    await first.close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (LATEST + 1,))
    store = PostgresStore(postgres_url, busy_timeout=0.5)
    with pytest.raises(StoreUnavailableError):
        await store.open()
    assert store.health().status == "error"
    assert f"v{LATEST + 1} is newer" in (store.health().reason or "")
    await store.close()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (LATEST + 1,)


async def test_an_absent_server_is_503_with_a_public_reason() -> None:
    url = f"postgresql://egemma:s3cret@127.0.0.1:{free_port()}/nowhere"
    store = PostgresStore(url, busy_timeout=1.0)
    with pytest.raises(StoreUnavailableError) as info:
        await store.conversations.create({}, [])
    assert info.value.status_code == 503
    assert info.value.retry_after >= 1
    reason = store.health().reason or ""
    assert store.health().status == "error"
    assert "PostgreSQL" in reason
    assert "s3cret" not in reason
    assert "127.0.0.1" not in reason
    await store.close()
