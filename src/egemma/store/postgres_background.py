"""``BackgroundStore`` on PostgreSQL's ``background_runs`` and ``background_events`` (v3)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from egemma.store.base import Item
from egemma.store.postgres_tables import Conn, _all, _one

if TYPE_CHECKING:
    from egemma.store.postgres import PostgresStore


class PostgresBackground:
    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def begin(self, response_id: str) -> None:
        async def run(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO background_runs (response_id, heartbeat_at) VALUES (%s, %s)",
                (response_id, time.time()),
            )

        await self._store.write(run)

    async def tick(self, response_id: str, first: int, events: list[Item]) -> bool:
        rows = [(response_id, first + i, json.dumps(e)) for i, e in enumerate(events)]

        async def run(conn: Conn) -> bool:
            if rows:
                async with conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO background_events (response_id, sequence_number, body) "
                        "VALUES (%s, %s, %s)",
                        rows,
                    )
            row = await _one(
                conn,
                "UPDATE background_runs SET heartbeat_at = %s WHERE response_id = %s "
                "RETURNING cancel_requested",
                (time.time(), response_id),
            )
            return bool(row and row[0])

        return await self._store.write(run)

    async def finish(self, response_id: str) -> None:
        async def run(conn: Conn) -> None:
            await conn.execute(
                "UPDATE background_runs SET done = TRUE WHERE response_id = %s", (response_id,)
            )

        await self._store.write(run)

    async def request_cancel(self, response_id: str) -> bool:
        async def run(conn: Conn) -> bool:
            row = await _one(
                conn,
                "UPDATE background_runs SET cancel_requested = TRUE WHERE response_id = %s "
                "RETURNING response_id",
                (response_id,),
            )
            return row is not None

        return await self._store.write(run)

    async def events_after(self, response_id: str, after: int) -> tuple[list[Item], bool]:
        async def run(conn: Conn) -> tuple[list[Item], bool]:
            # The run's state first: events written before ``done`` are then all visible.
            done = await _one(
                conn, "SELECT done FROM background_runs WHERE response_id = %s", (response_id,)
            )
            rows = await _all(
                conn,
                "SELECT body FROM background_events WHERE response_id = %s "
                "AND sequence_number > %s ORDER BY sequence_number",
                (response_id, after),
            )
            return [json.loads(r[0]) for r in rows], bool(done is None or done[0])

        return await self._store.read(run)

    async def abandoned(self, stale_before: float) -> list[str]:
        async def run(conn: Conn) -> list[str]:
            rows = await _all(
                conn,
                "SELECT response_id FROM background_runs WHERE NOT done AND heartbeat_at < %s",
                (stale_before,),
            )
            return [str(r[0]) for r in rows]

        return await self._store.read(run)
