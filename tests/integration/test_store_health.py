"""A broken store (garbage, newer schema, a directory, or replaced at run time) on a real server:
the server serves what still works, ``/health``, ``/ready`` and ``/metrics`` name the store, and
work that would end in a write is refused with a 503 *before* the model runs. Issue 18, item 12.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from egemma.app import create_app
from egemma.store.migrations import LATEST
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.fakes.chat import FakeChatEngine, fake_engines
from tests.servers import LiveServer


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 200)


def _newer(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE future (x TEXT)")
    conn.execute("INSERT INTO future VALUES ('kept')")
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.commit()
    conn.close()


def _directory(path: Path) -> None:
    path.mkdir()
    (path / "inside").write_text("a user's file")


def _fingerprint(path: Path) -> str:
    if path.is_dir():
        return "dir:" + ",".join(sorted(p.name for p in path.iterdir()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Running:
    def __init__(self, data: Path) -> None:
        self.engine = FakeChatEngine("fake")
        settings = make_settings(WORKBENCH_API_KEY=TEST_KEY, DATA_DIR=str(data))
        self.server = LiveServer(create_app(settings, engines=fake_engines(self.engine)))
        self.server.start()
        self.http = httpx.Client(base_url=self.server.base_url, headers=AUTH, timeout=30)
        self.stopped = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.http.close()
            self.server.stop()


@pytest.fixture
def running(clean_env: Path) -> Iterator[Callable[[], Running]]:
    started: list[Running] = []

    def start() -> Running:
        started.append(Running(clean_env))
        return started[-1]

    yield start
    for run in started:
        run.stop()


def _assert_store_refused(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert "Retry-After" in resp.headers
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "store_unavailable"
    assert error["type"] == "server_error"
    assert "store" in error["message"]


def _assert_reports_broken(run: Running, reason_has: str) -> None:
    health = run.http.get("/health").json()
    assert health["status"] == "degraded"
    assert health["store"]["status"] == "error"
    assert reason_has in health["store"]["reason"]
    assert "/" not in health["store"]["reason"]  # public: no paths
    assert health["chat_model"]["status"] == "loaded"  # the rest still serves
    ready = run.http.get("/ready")
    assert ready.status_code == 503
    assert "store" in ready.json()["not_ready"]
    assert reason_has in ready.json()["reasons"]["store"]
    metrics = run.http.get("/metrics").text
    assert "egemma_store_up 0.0" in metrics


@pytest.mark.parametrize(
    ("breaker", "reason_has"),
    [
        (_garbage, "not a database"),
        (_newer, f"v{LATEST + 1} is newer"),
        (_directory, "is a directory"),
    ],
)
def test_broken_store_at_start_is_reported_and_refused_before_the_model(
    clean_env: Path,
    running: Callable[[], Running],
    caplog: pytest.LogCaptureFixture,
    breaker: Callable[[Path], None],
    reason_has: str,
) -> None:
    clean_env.mkdir(parents=True, exist_ok=True)
    db = clean_env / "egemma.db"
    breaker(db)
    before = _fingerprint(db)
    caplog.set_level(logging.INFO)
    run = running()

    _assert_reports_broken(run, reason_has)
    # Default store:true, a conversation, and the conversation routes: 503 up front.
    _assert_store_refused(run.http.post("/v1/responses", json={"input": "hi"}))
    _assert_store_refused(run.http.post("/v1/responses", json={"input": "hi", "stream": True}))
    _assert_store_refused(run.http.post("/v1/conversations", json={}))
    _assert_store_refused(run.http.get("/v1/conversations"))
    _assert_store_refused(run.http.get("/v1/responses/resp_x"))
    assert run.engine.generations == 0, "the model ran for an answer that could not be kept"
    # What does not need the store keeps serving.
    ok = run.http.post("/v1/responses", json={"input": "hi", "store": False})
    assert ok.status_code == 200
    assert ok.json()["status"] == "completed"
    messages = [{"role": "user", "content": "x"}]
    chat = run.http.post("/v1/chat/completions", json={"messages": messages})
    assert chat.status_code == 200
    run.stop()

    # One ERROR line about the store, no traceback, however many requests hit it.
    lines = [r for r in caplog.records if r.name.startswith("egemma.store")]
    errors = [r for r in lines if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is None
    assert "serving without it" in errors[0].getMessage()
    # Nothing the user had is lost or rewritten.
    assert _fingerprint(db) == before
    if breaker is _newer:
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST + 1
        assert conn.execute("SELECT x FROM future").fetchall() == [("kept",)]
        conn.close()


def test_store_replaced_at_run_time_is_refused_before_the_model(
    clean_env: Path, running: Callable[[], Running]
) -> None:
    run = running()
    health = run.http.get("/health").json()
    assert health["store"] == {"status": "ok", "backend": "sqlite"}
    assert "egemma_store_up 1.0" in run.http.get("/metrics").text
    conv = run.http.post("/v1/conversations", json={}).json()
    first = run.http.post("/v1/responses", json={"input": "hi"})
    assert first.json()["status"] == "completed"
    generations = run.engine.generations

    db = clean_env / "egemma.db"
    os.replace(db, clean_env / "egemma.db.moved")  # an operator swaps the file underneath
    _garbage(db)

    _assert_store_refused(run.http.post("/v1/responses", json={"input": "hi"}))
    _assert_store_refused(
        run.http.post("/v1/responses", json={"input": "hi", "conversation": conv["id"]})
    )
    assert run.engine.generations == generations
    _assert_reports_broken(run, "replaced while the server ran")


def test_healthy_store_is_ready(running: Callable[[], Running]) -> None:
    run = running()
    assert run.http.get("/ready").json()["ready"] is True
    assert run.http.get("/health").json()["status"] == "ok"


def test_repaired_store_is_used_without_a_restart(
    clean_env: Path, running: Callable[[], Running]
) -> None:
    clean_env.mkdir(parents=True, exist_ok=True)
    db = clean_env / "egemma.db"
    _garbage(db)
    run = running()
    assert run.http.get("/ready").status_code == 503
    _assert_store_refused(run.http.post("/v1/conversations", json={}))
    db.unlink()  # the operator moves the broken file aside (restoring a backup works the same)
    assert run.http.get("/ready").json()["ready"] is True
    assert run.http.get("/health").json()["store"] == {"status": "ok", "backend": "sqlite"}
    assert run.http.post("/v1/conversations", json={}).status_code == 200
    assert run.http.post("/v1/responses", json={"input": "hi"}).json()["status"] == "completed"


def test_store_corrupted_in_place_stays_refused(
    clean_env: Path, running: Callable[[], Running]
) -> None:
    """Garbage written over the file while it is open: reads may still come from SQLite's cache
    and writes land in the WAL, but the store stays reported broken and refused until a probe
    of the file itself succeeds."""
    run = running()
    conv = run.http.post("/v1/conversations", json={}).json()
    with (clean_env / "egemma.db").open("r+b") as fh:
        fh.write(b"garbage!" * 2048)
    _assert_store_refused(run.http.post("/v1/responses", json={"input": "hi"}))
    for _ in range(2):
        _assert_store_refused(run.http.get(f"/v1/conversations/{conv['id']}"))
        _assert_store_refused(run.http.post("/v1/conversations", json={}))
    _assert_reports_broken(run, "not a database")
