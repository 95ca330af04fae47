"""llama-cpp-python's own OpenAI-compatible server (``python -m llama_cpp.server``) as a real
upstream for the remote chat engine, on 127.0.0.1 in its own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from egemma.modelfiles import resolve
from tests.servers import free_port

SMOL_SPEC = "builtin:smollm2-135m-instruct"


def smol_gguf() -> Path:
    return resolve(SMOL_SPEC, "CHAT_MODEL_PATH", Path("/nonexistent")).path


class Upstream:
    """``llama_cpp.server`` with the shipped SmolLM2 GGUF; ``stop`` and ``start`` again keep
    the port, so an eGemma pointed at it sees the same upstream go away and come back."""

    def __init__(self, log_path: Path, n_ctx: int = 2048) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.n_ctx = n_ctx
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        threads = str(min(2, os.cpu_count() or 1))
        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(smol_gguf()),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            threads,
            # Its default cuts a running generation short whenever another request arrives;
            # eGemma sends several at once (CHAT_UPSTREAM_CONCURRENCY).
            "--interrupt_requests",
            "false",
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("llama_cpp.server did not start in time")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")
