"""Shared helpers for the chat and state benchmarks: a real ``egemma serve`` subprocess and
streamed timings read line by line. Dev tool, never imported by the app."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key-0123456789"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``egemma serve`` in its own process (the bench client must not share its GIL)."""

    def __init__(self, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = tempfile.TemporaryDirectory(prefix="egemma-bench-")
        data = Path(self._tmp.name)
        full_env = {
            **os.environ,
            "WORKBENCH_API_KEY": KEY,
            "DATA_DIR": str(data),
            "EMBEDDING_ENABLED": "false",
            "SUMMARY_LOCAL_ENABLED": "false",
            "CHAT_RATE_LIMIT_CALLS": "1000000",
            "LOG_LEVEL": "warning",
            **env,
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "egemma",
                "--env-file",
                "/nonexistent",
                "serve",
                "--port",
                str(self.port),
            ],
            env=full_env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_ready(self.proc, f"{self.url}/ready", "egemma serve", 300)

    def stop(self) -> None:
        stop_process(self.proc)
        self._tmp.cleanup()


def wait_ready(proc: subprocess.Popen[bytes], url: str, name: str, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail when ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited during start")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not become ready")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def stream_timings(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send a streamed Responses request; time the first text delta and every later one."""
    start = time.perf_counter()
    stamps: list[float] = []
    final: dict[str, Any] = {}
    with (
        httpx.Client(timeout=300) as http,
        http.stream(
            "POST",
            f"{url}/v1/responses",
            json={**body, "stream": True},
            headers={"Authorization": f"Bearer {KEY}"},
        ) as resp,
    ):
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"].endswith(".delta"):
                stamps.append(time.perf_counter())
            elif event["type"] in ("response.completed", "response.incomplete"):
                final = event["response"]
    return {
        "ttft": stamps[0] - start if stamps else float("nan"),
        "stamps": stamps,
        "response": final,
    }


def decode_rate(stamps: list[float]) -> float:
    """Tokens per second between the first and last streamed token."""
    if len(stamps) < 2:
        return float("nan")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def median(values: list[float]) -> float:
    return statistics.median(values)


def row(
    metric: str,
    value: float,
    baseline: float | None,
    ratio: float | None,
    goal: str | None,
    unit: str,
) -> dict[str, Any]:
    def rnd(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    return {
        "metric": metric,
        "value": rnd(value),
        "baseline": rnd(baseline),
        "ratio": rnd(ratio),
        "goal": goal,
        "unit": unit,
    }
