"""Parse untrusted source in a few long-lived worker processes under time and memory bounds.

Why processes: CPython's parser raises MemoryError on ``'-'*100000+'1'`` and RecursionError on
``'a'+'.b'*100000``, and a 2.4 MB file takes ~1 GB and 10 s (reliability.md §6). A worker has
``RLIMIT_AS`` and a CPU limit; the parent enforces a wall-clock timeout and kills a worker that
overruns, dies or asks to be recycled, then starts a fresh one on the next request. Workers are
warm (one interpreter start, not one per file) because clients call ``/parse-ast`` per file.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import selectors
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import anyio.to_thread

from egemma.errors import InvalidRequestError, UnavailableError
from egemma.services.ast.common import AstSourceError, normalize_language
from egemma.settings import AstSettings

log = logging.getLogger(__name__)

_MAX_REPLY_BYTES = 64 * 1024 * 1024
_STARTUP_SECONDS = 30.0


class AstSourceTooLargeError(AstSourceError):
    """The upload is over the AST size cap (a 413, not a 400)."""

    status_code = 413
    default_code = "payload_too_large"


class AstUnavailableError(UnavailableError, RuntimeError):
    """No worker free in time, the service is closed, or a worker could not start (a 503)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=1)


class AstInternalError(RuntimeError):
    """An extractor bug reported by a worker (a 500)."""


@dataclass(frozen=True)
class AstLimits:
    max_source_bytes: int = 256 * 1024
    timeout_seconds: float = 10.0
    memory_bytes: int = 1024 * 1024 * 1024
    workers: int = 2
    max_jobs_per_worker: int = 500


def decode_source(data: bytes, max_bytes: int) -> str:
    """UTF-8 text of an upload (BOM dropped), or the error a client should see."""
    if len(data) > max_bytes:
        raise AstSourceTooLargeError(
            f"File is {len(data)} bytes; the AST limit is {max_bytes} bytes."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise AstSourceError("File is not valid UTF-8 text.", line=line, column=column) from None
    text = text.removeprefix("\ufeff")
    if not text.strip():  # as every other upload route answers
        raise InvalidRequestError("The file is empty.", param="file", code="empty_input")
    return text


class _Worker:
    """One worker process slot; the process is (re)started lazily."""

    def __init__(self, limits: AstLimits) -> None:
        self._limits = limits
        self._proc: subprocess.Popen[bytes] | None = None
        self._jobs = 0

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        proc = self._ensure()
        stdin, stdout = _pipes(proc)
        deadline = time.monotonic() + self._limits.timeout_seconds
        try:
            stdin.write(json.dumps(request).encode() + b"\n")
            stdin.flush()
            reply = json.loads(_read_line(stdout, deadline))
        except TimeoutError:
            self.stop()
            raise AstSourceError(
                f"Parsing took longer than {self._limits.timeout_seconds:g} seconds; "
                "the source is too large or too complex."
            ) from None
        except (OSError, EOFError, ValueError):
            self.stop()
            raise AstSourceError(
                "The parser ran out of resources on this source (too large or too deeply nested)."
            ) from None
        self._jobs += 1
        if reply.get("recycle") or self._jobs >= self._limits.max_jobs_per_worker:
            self.stop()
        if reply.get("ok"):
            return dict(reply["result"])
        if reply.get("internal"):
            raise AstInternalError("AST extraction failed")
        error = reply["error"]
        raise AstSourceError(error["message"], line=error.get("line"), column=error.get("column"))

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self.stop()
        src_root = str(Path(__file__).resolve().parents[3])
        env = {"PYTHONPATH": src_root, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUTF8": "1"}
        cmd = [sys.executable, "-m", "egemma.services.ast.worker", str(self._limits.memory_bytes)]
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, our own module
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True
        )
        self._proc, self._jobs = proc, 0
        try:
            ready = json.loads(_read_line(_pipes(proc)[1], time.monotonic() + _STARTUP_SECONDS))
        except (TimeoutError, EOFError, OSError, ValueError) as exc:
            self.stop()
            raise AstUnavailableError("The AST worker could not start.") from exc
        if not ready.get("ready"):
            self.stop()
            raise AstUnavailableError("The AST worker could not start.")
        return proc

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.warning("AST worker %s did not exit after SIGKILL", proc.pid)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def _pipes(proc: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes]]:
    assert proc.stdin is not None
    assert proc.stdout is not None
    return proc.stdin, proc.stdout


def _read_line(stream: IO[bytes], deadline: float) -> bytes:
    """One newline-terminated reply; TimeoutError at ``deadline``, EOFError if the pipe closes."""
    fd = stream.fileno()
    buf = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError
            buf += chunk
            if chunk.endswith(b"\n"):
                return bytes(buf)
            if len(buf) > _MAX_REPLY_BYTES:
                raise ValueError("reply too large")


class AstService:
    """``parse(data, language)`` → the ``/parse-ast`` document, through a bounded worker pool."""

    def __init__(self, limits: AstLimits | None = None) -> None:
        # Workers start on first use: building the service costs nothing.
        self.limits = limits or AstLimits()
        self._all = [_Worker(self.limits) for _ in range(max(1, self.limits.workers))]
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()  # warm workers first
        for worker in self._all:
            self._idle.put(worker)
        self._closed = threading.Event()
        self._slots: anyio.Semaphore | None = None
        self._threads: anyio.CapacityLimiter | None = None

    @classmethod
    def from_settings(cls, settings: AstSettings) -> AstService:
        return cls(
            AstLimits(
                max_source_bytes=settings.max_source_bytes,
                timeout_seconds=settings.timeout_seconds,
                memory_bytes=settings.memory_mb * 1024 * 1024,
                workers=settings.workers,
                max_jobs_per_worker=settings.max_jobs_per_worker,
            )
        )

    async def parse(self, data: bytes, language: str) -> dict[str, Any]:
        """Wait for a worker on the event loop (not in a shared pool thread: 60 waiting uploads
        once starved every other ``to_thread`` caller), then parse in a thread of our own
        limiter. Raises the errors of :meth:`parse_sync`."""
        if self._slots is None:
            self._slots = anyio.Semaphore(len(self._all))
            self._threads = anyio.CapacityLimiter(len(self._all))
        if self._closed.is_set():
            raise AstUnavailableError("The AST service is shutting down.")
        with anyio.move_on_after(self.limits.timeout_seconds) as waited:
            await self._slots.acquire()
        if waited.cancelled_caught:
            raise AstUnavailableError("All AST workers are busy; try again shortly.")
        try:
            worker = self._idle.get_nowait()  # a slot guarantees an idle worker
            try:
                return await anyio.to_thread.run_sync(
                    partial(self._run, worker, data, language), limiter=self._threads
                )
            finally:
                self._idle.put(worker)
        finally:
            self._slots.release()

    def _request(self, data: bytes, language: str) -> dict[str, Any]:
        canonical, grammar = normalize_language(language)
        source = decode_source(data, self.limits.max_source_bytes)
        return {
            "language": canonical,
            "grammar": grammar,
            "source": source,
            "timeout": self.limits.timeout_seconds,
        }

    def _run(self, worker: _Worker, data: bytes, language: str) -> dict[str, Any]:
        request = self._request(data, language)
        if self._closed.is_set():
            raise AstUnavailableError("The AST service is shutting down.")
        return worker.run(request)

    def parse_sync(self, data: bytes, language: str) -> dict[str, Any]:
        """Blocking (tests, the CLI). Raises UnsupportedLanguageError, AstSourceTooLargeError,
        AstSourceError (bad source), AstUnavailableError (busy or closed) and AstInternalError
        (extractor bug)."""
        self._request(data, language)  # validate before waiting for a worker
        if self._closed.is_set():
            raise AstUnavailableError("The AST service is shutting down.")
        try:
            worker = self._idle.get(timeout=self.limits.timeout_seconds)
        except queue.Empty:
            raise AstUnavailableError("All AST workers are busy; try again shortly.") from None
        try:
            return self._run(worker, data, language)
        finally:
            self._idle.put(worker)

    def warm_up(self) -> None:
        """Start every worker now (optional; otherwise each starts on first use)."""
        for worker in self._all:
            worker._ensure()

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        self._closed.set()
        for worker in self._all:
            worker.stop()
