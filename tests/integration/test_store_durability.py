"""A server killed with SIGKILL during concurrent writes loses no acknowledged item (SQLite and
PostgreSQL)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import AUTH, TEST_KEY
from tests.servers import free_port

_SERVER = """
import asyncio, sys
from hypercorn.asyncio import serve
from hypercorn.config import Config
from egemma.app import create_app
from egemma.runtime import Engines
from egemma.settings import Settings

config = Config()
config.bind = [f"127.0.0.1:{sys.argv[1]}"]
asyncio.run(serve(create_app(Settings(env_file=None), engines=Engines()), config))
"""


def _wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited"
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError("server did not start")


def _stored_item_ids(data: Path, backend: dict[str, str]) -> set[str]:
    url = backend.get("STORE_URL")
    if url:
        import psycopg

        with psycopg.connect(url) as pg:
            return {r[0] for r in pg.execute("SELECT item_id FROM conversation_items")}
    conn = sqlite3.connect(data / "egemma.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {row[0] for row in conn.execute("SELECT item_id FROM conversation_items")}
    conn.close()
    return stored


def test_sigkill_during_writes_loses_no_acknowledged_item(
    clean_env: Path, store_backend: dict[str, str]
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "WORKBENCH_API_KEY": TEST_KEY,
        "CONVERSATION_RATE_LIMIT_CALLS": "100000",
        **store_backend,
    }
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(port)], env=env)
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    try:
        _wait_ready(base, proc)
        conv = httpx.post(f"{base}/v1/conversations", json={}, headers=AUTH).json()["id"]

        def writer(n: int) -> None:
            with httpx.Client(base_url=base, headers=AUTH, timeout=10) as http:
                i = 0
                while not stop.is_set():
                    item = {"role": "user", "content": f"{n}-{i}" * 200}
                    try:
                        resp = http.post(f"/v1/conversations/{conv}/items", json={"items": [item]})
                    except httpx.HTTPError:
                        return  # the server is gone
                    if resp.status_code == 200:
                        with lock:
                            acknowledged.append(resp.json()["data"][0]["id"])
                    i += 1

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # writers are still sending
        proc.wait()
        stop.set()
        for t in threads:
            t.join()
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert len(acknowledged) >= 150
    assert set(acknowledged) <= _stored_item_ids(clean_env, store_backend)
