"""SIGTERM drain with the batched engine: the real ``egemma serve`` process and the shipped
SmolLM2. A short stream finishes inside the grace, a long one ends with ``response.failed``
(``server_shutdown``), the pinned slot is written to disk as the engine closes, exit code 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import KEY, SMOL
from tests.servers import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {KEY}"}


class Stream(threading.Thread):
    def __init__(self, base: str, payload: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.base, self.payload = base, payload
        self.events: list[dict[str, Any]] = []
        self.deltas = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(base_url=self.base, headers=AUTH, timeout=300) as http,
                http.stream("POST", "/v1/responses", json={**self.payload, "stream": True}) as r,
            ):
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
                        if self.events[-1]["type"] == "response.output_text.delta":
                            self.deltas.set()
        except BaseException as exc:  # surfaced by the test
            self.error = exc
        finally:
            self.deltas.set()

    @property
    def terminal(self) -> dict[str, Any]:
        assert self.error is None, self.error
        assert self.events, "no events"
        return self.events[-1]


def start_server(data: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "SUMMARY_"))},
        "WORKBENCH_API_KEY": KEY,
        "DATA_DIR": str(data),
        "PORT": str(port),
        "GRACEFUL_TIMEOUT": "30",
        "CHAT_ENGINE": "batched",
        "CHAT_PARALLEL": "2",
        "CHAT_N_CTX": "8192",
        "CHAT_EXTRA_MODELS": "",
        "EMBEDDING_ENABLED": "false",
        "SUMMARY_LOCAL_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "egemma", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not start: " + log.read_text()[-2000:])


@pytest.mark.timeout(600)
def test_sigterm_drains_the_batched_engine(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "serve.log"
    proc, base = start_server(data, log)
    try:
        # Greedy, SmolLM2 repeats the word until the token budget (2,500 tokens took 56 s alone on
        # 2 idle cores; counting instead stops by itself after ~120): far past the 30 s grace.
        # The short one ends inside it.
        long = Stream(
            base,
            {
                "model": SMOL,
                "input": "Write the word hello 5000 times, separated by spaces.",
                "max_output_tokens": 7000,
                "temperature": 0,
            },
        )
        short = Stream(
            base,
            {
                "model": SMOL,
                "input": "Say hi.",
                "max_output_tokens": 4,
                "temperature": 0,
                "prompt_cache_key": "drain-pin",
            },
        )
        long.start()
        assert long.deltas.wait(120)
        short.start()
        assert short.deltas.wait(120)
        proc.send_signal(signal.SIGTERM)
        short.join(60)
        long.join(60)
        assert short.terminal["type"] in ("response.completed", "response.incomplete"), (
            short.terminal
        )
        assert long.terminal["type"] == "response.failed", long.terminal["type"]
        assert long.terminal["response"]["error"]["code"] == "server_shutdown"
        assert proc.wait(60) == 0, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The engine closed in order: its pinned slot was written for the next start.
    assert list((data / "kv-slots").rglob("*.kv")), log.read_text()[-2000:]
