"""The stores: migrations, pagination, concurrency, locks, kill -9 and restarts.

The behaviour every store promises (round trips, pagination, ordering, duplicates, concurrent
writers) runs on SQLite and on a real PostgreSQL (``store_backend``); the file, lock and WAL
tests are SQLite's own."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from egemma.services.responses.items import normalize_input
from egemma.store.base import CursorNotFoundError, DuplicateItemError, Store, StoreUnavailableError
from egemma.store.migrations import LATEST
from egemma.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio


def _msgs(*texts: str) -> list[dict[str, Any]]:
    return normalize_input([{"role": "user", "content": t} for t in texts])


def _response(rid: str, output: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "output": output or [],
    }


def _opener(tmp_path: Path, backend: dict[str, str], busy: float) -> Callable[[], Store]:
    """A function that builds another store on the same database (as another process would)."""
    url = backend.get("STORE_URL")
    if url:
        from egemma.store.postgres import PostgresStore

        return lambda: PostgresStore(url, busy_timeout=busy)
    return lambda: SqliteStore(tmp_path / "egemma.db", busy_timeout=busy)


@pytest.fixture
async def store(tmp_path: Path, store_backend: dict[str, str]) -> AsyncIterator[Store]:
    s = _opener(tmp_path, store_backend, 2.0)()
    await s.open()
    yield s
    await s.close()


async def test_fresh_database_is_migrated_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "egemma.db"
    first: Store = SqliteStore(path)
    await first.open()
    await first.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"responses", "response_items", "conversations", "conversation_items"} <= tables
    conn.close()
    again = SqliteStore(path)
    await again.open()  # idempotent
    await again.close()


async def test_schema_newer_than_code_is_refused_with_503(tmp_path: Path) -> None:
    path = tmp_path / "egemma.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.close()
    store = SqliteStore(path, busy_timeout=0.2)
    with pytest.raises(StoreUnavailableError) as info:
        await store.conversations.get("conv_x")
    assert info.value.status_code == 503
    await store.close()


async def test_corrupt_file_is_503_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "egemma.db"
    path.write_bytes(b"this is not a database" * 100)
    store = SqliteStore(path, busy_timeout=0.2)
    with pytest.raises(StoreUnavailableError):
        await store.open()
    await store.close()


async def test_responses_round_trip_and_delete(store: Store) -> None:
    inputs = _msgs("a", "b")
    out = normalize_input([{"role": "assistant", "content": "c", "id": "msg_out"}])
    await store.responses.save(_response("resp_1", out), inputs)
    got = await store.responses.get("resp_1")
    assert got is not None
    assert got[0]["output"] == out
    assert got[1] == inputs
    assert await store.responses.find_item("msg_out") == out[0]
    assert await store.responses.find_item(inputs[1]["id"]) == inputs[1]
    # save again replaces (e.g. in_progress → completed)
    await store.responses.save({**_response("resp_1", out), "status": "incomplete"}, inputs[:1])
    got = await store.responses.get("resp_1")
    assert got is not None
    assert got[0]["status"] == "incomplete"
    assert got[1] == inputs[:1]
    assert await store.responses.delete("resp_1") is True
    assert await store.responses.get("resp_1") is None
    assert await store.responses.delete("resp_1") is False
    assert await store.responses.find_item("msg_out") is None


async def test_input_items_pagination(store: Store) -> None:
    items = _msgs(*[str(i) for i in range(5)])
    ids = [i["id"] for i in items]
    await store.responses.save(_response("resp_p"), items)
    page = await store.responses.list_input_items("resp_p", limit=2)
    assert page is not None
    assert [i["id"] for i in page.data] == [ids[4], ids[3]]
    assert page.has_more
    assert (page.first_id, page.last_id) == (ids[4], ids[3])
    page = await store.responses.list_input_items("resp_p", limit=2, after=ids[3])
    assert page is not None
    assert [i["id"] for i in page.data] == [ids[2], ids[1]]
    page = await store.responses.list_input_items("resp_p", limit=10, order="asc", after=ids[2])
    assert page is not None
    assert [i["id"] for i in page.data] == ids[3:]
    assert not page.has_more
    page = await store.responses.list_input_items("resp_p", limit=2, order="asc", before=ids[4])
    assert page is not None
    assert [i["id"] for i in page.data] == [ids[2], ids[3]]
    assert await store.responses.list_input_items("resp_missing") is None
    with pytest.raises(CursorNotFoundError):
        await store.responses.list_input_items("resp_p", after="msg_nope")


async def test_conversation_lifecycle(store: Store) -> None:
    conv = await store.conversations.create({"topic": "x"}, _msgs("hello"))
    assert conv["object"] == "conversation"
    assert conv["id"].startswith("conv_")
    assert await store.conversations.get(conv["id"]) == conv
    updated = await store.conversations.update(conv["id"], {"topic": "y"})
    assert updated is not None
    assert updated["metadata"] == {"topic": "y"}
    assert await store.conversations.update("conv_missing", {}) is None

    more = _msgs("a", "b", "c")
    assert await store.conversations.add_items(conv["id"], more) == more
    everything = await store.conversations.all_items(conv["id"])
    assert everything is not None
    assert [i["content"][0]["text"] for i in everything] == ["hello", "a", "b", "c"]
    page = await store.conversations.list_items(conv["id"], limit=2)
    assert page is not None
    assert [i["content"][0]["text"] for i in page.data] == ["c", "b"]
    assert page.has_more
    page = await store.conversations.list_items(conv["id"], after=page.last_id, limit=5)
    assert page is not None
    assert [i["content"][0]["text"] for i in page.data] == ["a", "hello"]
    assert not page.has_more

    assert await store.conversations.get_item(conv["id"], more[0]["id"]) == more[0]
    assert await store.conversations.delete_item(conv["id"], more[0]["id"]) is True
    assert await store.conversations.get_item(conv["id"], more[0]["id"]) is None
    assert await store.conversations.delete_item(conv["id"], more[0]["id"]) is False

    listing = await store.conversations.list_conversations(limit=10)
    assert [(c["id"], c["item_count"]) for c in listing.data] == [(conv["id"], 3)]
    assert await store.conversations.delete(conv["id"]) is True
    assert await store.conversations.get(conv["id"]) is None
    assert await store.conversations.list_items(conv["id"]) is None
    assert await store.conversations.add_items(conv["id"], _msgs("x")) is None
    assert await store.responses.find_item(more[1]["id"]) is None


async def test_duplicate_item_rolls_back_the_whole_append(store: Store) -> None:
    conv = await store.conversations.create({}, [])
    first = _msgs("a")
    await store.conversations.add_items(conv["id"], first)
    with pytest.raises(DuplicateItemError):
        await store.conversations.add_items(conv["id"], [*_msgs("b"), first[0]])
    items = await store.conversations.all_items(conv["id"])
    assert items == first


async def test_list_conversations_newest_first_with_cursor(store: Store) -> None:
    ids = [(await store.conversations.create({}, []))["id"] for _ in range(3)]
    page = await store.conversations.list_conversations(limit=2)
    assert [c["id"] for c in page.data] == [ids[2], ids[1]]
    assert page.has_more
    page = await store.conversations.list_conversations(limit=2, after=ids[1])
    assert [c["id"] for c in page.data] == [ids[0]]
    assert not page.has_more


def test_concurrent_writers_lose_no_item(tmp_path: Path, store_backend: dict[str, str]) -> None:
    opener = _opener(tmp_path, store_backend, 30.0)
    shared = opener()

    async def create() -> dict[str, Any]:
        try:
            return await shared.conversations.create({}, [])
        finally:  # a PostgreSQL pool belongs to the event loop that opened it
            await shared.close()

    conv = asyncio.run(create())
    shared = opener()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        # Every thread its own store (like separate processes or replicas).
        store = opener()

        async def run() -> None:
            for i in range(20):
                await store.conversations.add_items(conv["id"], _msgs(f"{n}-{i}"))
            await store.close()

        try:
            asyncio.run(run())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    async def read_all() -> list[dict[str, Any]] | None:
        try:
            return await shared.conversations.all_items(conv["id"])
        finally:
            await shared.close()

    items = asyncio.run(read_all())
    assert items is not None
    assert sorted(i["content"][0]["text"] for i in items) == sorted(
        f"{n}-{i}" for n in range(8) for i in range(20)
    )


async def test_locked_database_retries_then_503(tmp_path: Path) -> None:
    path = tmp_path / "egemma.db"
    store = SqliteStore(path, busy_timeout=0.3)
    conv = await store.conversations.create({}, [])
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailableError) as info:
            await store.conversations.add_items(conv["id"], _msgs("x"))
        assert info.value.status_code == 503
        assert info.value.headers["Retry-After"] == "1"
        # WAL: readers are not blocked by a writer.
        assert await store.conversations.get(conv["id"]) == conv
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await store.close()


async def test_lock_released_within_budget_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "egemma.db"
    store = SqliteStore(path, busy_timeout=10.0)
    conv = await store.conversations.create({}, [])
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    timer = threading.Timer(0.3, lambda: blocker.execute("COMMIT"))
    timer.start()
    try:
        assert await store.conversations.add_items(conv["id"], _msgs("x")) is not None
    finally:
        timer.join()
        blocker.close()
    items = await store.conversations.all_items(conv["id"])
    assert items is not None
    assert len(items) == 1
    await store.close()


def test_restart_keeps_data_and_leaves_no_wal(tmp_path: Path) -> None:
    path = tmp_path / "egemma.db"

    async def write() -> dict[str, Any]:
        first = SqliteStore(path)
        conv = await first.conversations.create({"k": "v"}, _msgs("kept"))
        await first.responses.save(_response("resp_r"), _msgs("in"))
        await first.close()
        return conv

    async def read(conv: dict[str, Any]) -> None:
        second = SqliteStore(path)
        assert await second.conversations.get(conv["id"]) == conv
        assert await second.responses.get("resp_r") is not None
        await second.close()

    conv = asyncio.run(write())
    assert not Path(f"{path}-wal").exists()
    asyncio.run(read(conv))


async def test_closed_store_answers_503(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "egemma.db")
    await store.open()
    await store.close()
    with pytest.raises(StoreUnavailableError):
        await store.conversations.get("conv_x")


_WRITER = """
import asyncio, sys
from pathlib import Path
from egemma.store.sqlite import SqliteStore

async def main() -> None:
    store = SqliteStore(Path(sys.argv[1]))
    conv = sys.argv[2]
    i = 0
    while True:
        item = {"id": f"msg_{i}", "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_text", "text": "x" * 2000}]}
        await store.conversations.add_items(conv, [item])
        print(item["id"], flush=True)  # only after the commit returned
        i += 1

asyncio.run(main())
"""


def test_kill_9_during_writes_loses_no_committed_item(tmp_path: Path) -> None:
    path = tmp_path / "egemma.db"
    setup = SqliteStore(path)
    conv = asyncio.run(setup.conversations.create({}, []))
    setup.close_sync()
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), conv["id"]],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    committed = []
    deadline = time.monotonic() + 60
    while len(committed) < 200 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        committed.append(line.strip())
    proc.send_signal(signal.SIGKILL)  # mid-write: the loop never pauses
    proc.wait()
    assert len(committed) >= 200
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {r[0] for r in conn.execute("SELECT item_id FROM conversation_items")}
    conn.close()
    assert set(committed) <= stored


async def test_rows_from_before_owners_belong_to_the_admin(tmp_path: Path) -> None:
    """Migration v2 on a v1 database: existing rows are kept and owned by the primary key."""
    from egemma.store.base import ADMIN, Owner
    from egemma.store.migrations import MIGRATIONS

    path = tmp_path / "egemma.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0].sql + "; PRAGMA user_version = 1;")
    conn.execute(
        "INSERT INTO responses (id, created_at, body) VALUES ('resp_old', 1, '{\"id\":1}')"
    )
    conn.execute(
        "INSERT INTO conversations (id, created_at, metadata) VALUES ('conv_old', 1, '{}')"
    )
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    await store.open()
    alice = store.scoped(Owner("alice"))
    assert await alice.responses.get("resp_old") is None
    assert await alice.conversations.get("conv_old") is None
    assert not await alice.conversations.delete("conv_old")
    assert (await alice.conversations.list_conversations()).data == []
    admin = store.scoped(ADMIN)
    assert await admin.responses.get("resp_old") is not None
    assert await admin.conversations.get("conv_old") is not None
    # A named admin sees them too; rows alice writes are hers and visible to admins.
    mine = await alice.conversations.create({}, _msgs("hers"))
    assert await store.scoped(Owner("carol", admin=True)).conversations.get(mine["id"]) == mine
    assert await store.scoped(Owner("bob")).conversations.get(mine["id"]) is None
    assert (
        await store.scoped(Owner("bob")).responses.find_item(
            (await alice.conversations.all_items(mine["id"]) or [{}])[0]["id"]
        )
        is None
    )
    await store.close()
