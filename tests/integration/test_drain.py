"""SIGTERM drain on the real serve path (``serve_app``: signals, Hypercorn) with fake models in a
subprocess, plus the drain's pieces in-process (reliability.md §4)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from egemma.app import create_app
from egemma.settings import Settings
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.fakes.chat import FakeChatEngine, fake_engines
from tests.fakes.embeddings import FakeEmbeddingEngine
from tests.servers import LiveServer, free_port

ROOT = Path(__file__).resolve().parents[2]


class Stream(threading.Thread):
    """Reads one SSE stream to its end in the background."""

    def __init__(self, base_url: str, model: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.model = model
        self.events: list[dict[str, Any]] = []
        self.started = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        body = {"model": self.model, "input": "hi", "stream": True}
        try:
            with (
                httpx.Client(base_url=self.base_url, headers=AUTH, timeout=60) as http,
                http.stream("POST", "/v1/responses", json=body) as resp,
            ):
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
                        self.started.set()
        except BaseException as exc:  # surfaced by the test
            self.error = exc
            self.started.set()

    @property
    def terminal(self) -> dict[str, Any]:
        assert self.error is None, self.error
        assert self.events, "no events"
        return self.events[-1]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(grace: float) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        log = tmp_path / f"serve-{port}.log"
        env = {
            **os.environ,
            "WORKBENCH_API_KEY": TEST_KEY,
            "DATA_DIR": str(tmp_path / "data"),
            "PORT": str(port),
            "GRACEFUL_TIMEOUT": str(grace),
            "CHAT_RATE_LIMIT_CALLS": "100000",
            "PYTHONPATH": str(ROOT),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.serve_fake"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    return proc, base
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("server did not start")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_draining(base: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        resp = httpx.get(f"{base}/ready", timeout=2)
        if resp.status_code == 503:
            assert resp.json()["reason"] == "draining"
            return
        time.sleep(0.02)
    raise AssertionError("never reported draining")


@pytest.mark.slow
def test_sigterm_drains_then_exits_cleanly(serve: Any, tmp_path: Path) -> None:
    proc, base = serve(grace=1.5)
    created = httpx.post(f"{base}/v1/conversations", json={}, headers=AUTH, timeout=10)
    assert created.status_code == 200
    slow, fast = Stream(base, "slow"), Stream(base, "fast")
    slow.start()
    fast.start()
    assert slow.started.wait(10)
    assert fast.started.wait(10)

    proc.send_signal(signal.SIGTERM)
    _wait_draining(base)
    health = httpx.get(f"{base}/health", timeout=5).json()
    assert health["status"] == "draining"
    for path, body in (
        ("/v1/responses", {"model": "fast", "input": "hi"}),
        ("/v1/conversations", {}),
    ):
        refused = httpx.post(f"{base}{path}", json=body, headers=AUTH, timeout=5)
        assert refused.status_code == 503, path
        assert refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "draining"
    # Reads still work while in-flight work finishes.
    conv = created.json()["id"]
    assert httpx.get(f"{base}/v1/conversations/{conv}", headers=AUTH).status_code == 200

    slow.join(30)
    fast.join(30)
    assert fast.terminal["type"] == "response.completed"
    assert slow.terminal["type"] == "response.failed"
    assert slow.terminal["response"]["error"]["code"] == "server_shutdown"
    assert proc.wait(30) == 0
    data = tmp_path / "data"
    assert (data / "egemma.db").is_file()
    assert not (data / "egemma.db-wal").exists()


@pytest.mark.slow
def test_second_signal_skips_the_grace(serve: Any) -> None:
    proc, base = serve(grace=300)
    slow = Stream(base, "slow")
    slow.start()
    assert slow.started.wait(10)
    proc.send_signal(signal.SIGTERM)
    _wait_draining(base)
    proc.send_signal(signal.SIGINT)
    slow.join(30)
    assert slow.terminal["type"] == "response.failed"
    assert proc.wait(30) == 0


@pytest.fixture
def settings() -> Settings:
    return make_settings(WORKBENCH_API_KEY=TEST_KEY, CHAT_QUEUE_SIZE=4)


def test_drain_turns_away_queued_requests(settings: Settings) -> None:
    """A request waiting for the model gets 503 at once when the drain starts, not a hang."""
    fake = FakeChatEngine("slow", script="tok " * 100_000, delay=0.01)
    app = create_app(settings, engines=fake_engines(fake))
    server = LiveServer(app)
    server.start()
    try:
        holder = Stream(server.base_url, "slow")
        holder.start()
        assert holder.started.wait(10)
        result: dict[str, httpx.Response] = {}

        def queued() -> None:
            result["r"] = httpx.post(
                f"{server.base_url}/v1/responses",
                json={"model": "slow", "input": "hi"},
                headers=AUTH,
                timeout=30,
            )

        waiter = threading.Thread(target=queued)
        waiter.start()
        deadline = time.monotonic() + 10
        while fake.admission_stats().depth == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server._loop is not None
        done = asyncio.run_coroutine_threadsafe(app.state.egemma.drain(0.2), server._loop)
        waiter.join(15)
        assert result["r"].status_code == 503
        assert result["r"].json()["error"]["code"] == "draining"
        done.result(15)
        holder.join(15)
        assert holder.terminal["type"] == "response.failed"
        assert not fake.admission_stats().busy
    finally:
        server.stop()


@pytest.mark.anyio
async def test_draining_refuses_every_write_but_serves_reads(settings: Settings) -> None:
    engines = fake_engines(FakeChatEngine("fake"), summary=True)
    engines.embedding = FakeEmbeddingEngine(dimension=16)
    engines.capability("embeddings").status = "loaded"
    app = create_app(settings, engines=engines)
    async with LifespanManager(app) as mgr:
        transport = httpx.ASGITransport(app=mgr.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            app.state.egemma.draining = True
            writes = [
                ("/v1/responses", {"json": {"input": "hi"}}),
                (
                    "/v1/chat/completions",
                    {"json": {"messages": [{"role": "user", "content": "x"}]}},
                ),
                ("/v1/embeddings", {"json": {"input": "hi"}}),
                ("/embed", {"files": {"file": ("a.txt", b"hi")}}),
                ("/summarize", {"files": {"file": ("a.py", b"print(1)\n")}}),
                ("/parse-ast", {"data": {"language": "python"}, "files": {"file": ("a.py", b"x")}}),
                ("/v1/conversations", {"json": {}}),
            ]
            for path, kwargs in writes:
                resp = await http.post(path, headers=AUTH, **kwargs)
                assert resp.status_code == 503, path
                assert resp.headers["retry-after"] == "5"
                assert resp.json()["error"]["code"] == "draining"
            assert (await http.get("/v1/models", headers=AUTH)).status_code == 200
            assert (await http.get("/v1/conversations", headers=AUTH)).status_code == 200
            assert (await http.post("/v1/responses", json={})).status_code == 401
            metrics = (await http.get("/metrics")).text
            assert "egemma_draining 1.0" in metrics
