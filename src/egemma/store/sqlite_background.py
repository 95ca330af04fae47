"""``BackgroundStore`` on SQLite's ``background_runs`` and ``background_events`` (migration v3)."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import TYPE_CHECKING

from egemma.store.base import Item

if TYPE_CHECKING:
    from egemma.store.sqlite import SqliteStore


class SqliteBackground:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def begin(self, response_id: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO background_runs (response_id, heartbeat_at) VALUES (?, ?)",
                (response_id, time.time()),
            )

        await self._store.write(run)

    async def tick(self, response_id: str, first: int, events: list[Item]) -> bool:
        rows = [(response_id, first + i, json.dumps(e)) for i, e in enumerate(events)]

        def run(conn: sqlite3.Connection) -> bool:
            conn.executemany(
                "INSERT INTO background_events (response_id, sequence_number, body) "
                "VALUES (?, ?, ?)",
                rows,
            )
            conn.execute(
                "UPDATE background_runs SET heartbeat_at = ? WHERE response_id = ?",
                (time.time(), response_id),
            )
            row = conn.execute(
                "SELECT cancel_requested FROM background_runs WHERE response_id = ?",
                (response_id,),
            ).fetchone()
            return bool(row and row[0])

        return await self._store.write(run)

    async def finish(self, response_id: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE background_runs SET done = 1 WHERE response_id = ?", (response_id,)
            )

        await self._store.write(run)

    async def request_cancel(self, response_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE background_runs SET cancel_requested = 1 WHERE response_id = ?",
                (response_id,),
            )
            return cur.rowcount > 0

        return await self._store.write(run)

    async def events_after(self, response_id: str, after: int) -> tuple[list[Item], bool]:
        def run(conn: sqlite3.Connection) -> tuple[list[Item], bool]:
            rows = conn.execute(
                "SELECT body FROM background_events WHERE response_id = ? "
                "AND sequence_number > ? ORDER BY sequence_number",
                (response_id, after),
            ).fetchall()
            done = conn.execute(
                "SELECT done FROM background_runs WHERE response_id = ?", (response_id,)
            ).fetchone()
            return [json.loads(r[0]) for r in rows], bool(done is None or done[0])

        return await self._store.read(run)

    async def abandoned(self, stale_before: float) -> list[str]:
        def run(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT response_id FROM background_runs WHERE done = 0 AND heartbeat_at < ?",
                (stale_before,),
            ).fetchall()
            return [str(r[0]) for r in rows]

        return await self._store.read(run)
