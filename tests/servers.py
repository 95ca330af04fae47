"""Run an ASGI app on a real Hypercorn bound to 127.0.0.1, in a background thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
from fastapi import FastAPI
from hypercorn.asyncio import serve
from hypercorn.config import Config

from egemma import hypercorn_errors


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    def __init__(
        self, app: FastAPI, graceful_timeout: float = 5.0, startup_timeout: float = 60.0
    ) -> None:
        self.app = app
        self._startup = startup_timeout
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._graceful = graceful_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _run(self) -> None:
        hypercorn_errors.install()  # as egemma serve does
        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.graceful_timeout = self._graceful
        config.startup_timeout = self._startup  # a 1.2 GB model loads and warms up first
        config.accesslog = None
        config.errorlog = None

        async def main() -> None:
            self._stop = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            await serve(self.app, config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test through start()/stop()
            self.error = exc

    def start(self, timeout: float = 120.0) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise RuntimeError("server failed to start") from self.error
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not start in time")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
