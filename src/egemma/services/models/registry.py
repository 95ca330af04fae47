"""The model registry: every configured model, its state and memory, and the one place that
loads, evicts and unloads them within ``MODEL_MEMORY_BUDGET``.

A model is ``configured → loading → loaded → unloading → configured`` (``error`` when its last
load failed; the next request tries again). ``use`` is how a request gets a model: it counts the
request as a user first (so nothing evicts it while it waits), loads the model if needed,
evicting least-recently-used *idle* models until the estimate fits, and gives up after
``MODEL_LOAD_TIMEOUT`` with 503 + ``Retry-After`` when the models in the way stay in use. A model
whose estimate exceeds the budget alone is refused at once, naming ``MODEL_MEMORY_BUDGET``.
Concurrent first requests share one load (one lock; the second finds it loaded). A model with a
running or queued generation is never unloaded, by eviction, idle TTL or the admin route.

Memory is estimated before loading (GGUF header: weights + KV cache + compute buffer; ONNX:
file sizes) and the budget is kept with these estimates; the measured resident-set growth of the
load is reported beside them (with mmap it is lower until pages are touched). Where layers are
offloaded to a GPU, their weights and KV cache count against ``MODEL_VRAM_BUDGET`` instead;
admission checks both budgets.

Each request may say how long its model stays loaded after it (``keep_alive``, Ollama's idea):
the last request to finish sets the model's idle time-to-live (``None``: ``MODEL_IDLE_TTL``;
``0``: unload as soon as it is idle; ``inf``: never). A load, once started, runs to its end even
when the request that started it leaves, so the lock and the model's state stay consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from egemma.engines.base import Disconnected
from egemma.errors import ClientLeftError, InvalidRequestError, NotFoundError, UnavailableError

log = logging.getLogger(__name__)

ModelState = Literal["configured", "loading", "loaded", "unloading", "error"]
ModelKind = Literal["chat", "summary", "embedding", "rerank"]
WAIT_POLL_SECONDS = 0.1
REAP_MIN_SECONDS = 0.05
GIB = 1024**3


def rss_bytes() -> int:
    """This process's resident set (Linux ``/proc``; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def machine_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 0


def default_budget(total: int) -> int:
    """What the machine has, minus a margin for the OS and the server (10%, at least 1 GiB)."""
    return max(0, total - max(GIB, total // 10))


def human(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _seconds(value: float | None) -> float | None:
    """A time-to-live for JSON: ``-1`` for never (JSON has no infinity)."""
    if value is None:
        return None
    return -1.0 if math.isinf(value) else value


@dataclass
class ModelEntry:
    """One configured model. ``load`` builds its engine (blocking); ``close`` frees it."""

    id: str
    kind: ModelKind
    path: str
    estimate: int  # RAM bytes, before loading
    load: Callable[[], Any]
    detail: dict[str, Any] = field(default_factory=dict)
    pinned: bool = False  # never unloaded (an engine the app holds directly)
    state: ModelState = "configured"
    engine: Any = None
    users: int = 0  # running or queued requests
    last_used: float = 0.0
    measured: int | None = None
    load_seconds: float | None = None
    error: str | None = None
    keep_alive: float | None = None  # the last request's idle override, seconds (inf: never)
    vram_estimate: int = 0  # bytes on the GPU (offloaded layers' weights and KV cache)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "loaded": self.state == "loaded",
            "in_use": self.users,
            "memory": {
                "estimated_bytes": self.estimate,
                "measured_bytes": self.measured,
                "vram_estimated_bytes": self.vram_estimate,
            },
            "keep_alive": _seconds(self.keep_alive),
            "load_seconds": self.load_seconds,
            **({"error": self.error} if self.error else {}),
        }


class ModelRegistry:
    """Owns every managed model's lifecycle; runs on the server's event loop."""

    def __init__(
        self, budget: int, idle_ttl: float, load_timeout: float, vram_budget: int | None = None
    ) -> None:
        self.budget = budget
        self.vram_budget = vram_budget  # None: no GPU budget (none visible, none set)
        self.idle_ttl = idle_ttl
        self.load_timeout = load_timeout
        self.entries: dict[str, ModelEntry] = {}
        self.loads = 0
        self.unloads = 0
        self.evictions = 0
        self.load_failures = 0
        self.load_seconds_total = 0.0
        self._lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        self.closed = False

    # -- configuration ------------------------------------------------------------------------

    def add(self, entry: ModelEntry) -> ModelEntry:
        self.entries.setdefault(entry.id, entry)
        return self.entries[entry.id]

    def get(self, model_id: str) -> ModelEntry:
        entry = self.entries.get(model_id)
        if entry is None:
            known = ", ".join(sorted(self.entries))
            raise NotFoundError(
                f"The model '{model_id}' is not configured here. Configured models: {known}.",
                param="model",
                code="model_not_found",
            )
        return entry

    def _holding(self) -> list[ModelEntry]:
        return [e for e in self.entries.values() if e.state in ("loaded", "loading")]

    @property
    def used(self) -> int:
        return sum(e.estimate for e in self._holding())

    @property
    def used_vram(self) -> int:
        return sum(e.vram_estimate for e in self._holding())

    def fits_alone(self, entry: ModelEntry) -> bool:
        """Whether ``entry`` fits both budgets with every other model unloaded."""
        vram_ok = self.vram_budget is None or entry.vram_estimate <= self.vram_budget
        return entry.estimate <= self.budget and vram_ok

    def _over_budget(self, entry: ModelEntry) -> bool:
        if self.used + entry.estimate > self.budget:
            return True
        return self.vram_budget is not None and (
            self.used_vram + entry.vram_estimate > self.vram_budget
        )

    def describe(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget,
            "used_bytes": self.used,
            "vram_budget_bytes": self.vram_budget,
            "vram_used_bytes": self.used_vram,
            "idle_ttl": self.idle_ttl,
            "models": [e.describe() for e in self.entries.values()],
        }

    # -- use ----------------------------------------------------------------------------------

    async def use(self, entry: ModelEntry, is_disconnected: Disconnected | None = None) -> Any:
        """The entry's engine, loaded if need be; the caller is a user until ``release``."""
        entry.users += 1
        try:
            if entry.state != "loaded":
                await self._ensure_loaded(entry, is_disconnected)
        except BaseException:
            self.release(entry)
            raise
        return entry.engine

    def release(
        self, entry: ModelEntry, keep_alive: float | None | Literal["unchanged"] = "unchanged"
    ) -> None:
        """The end of one use. ``keep_alive`` (seconds, ``inf`` never, ``None`` the default)
        is how long the model stays loaded once idle: the last request to finish decides; a
        use that never ran (its load or admission failed) leaves it ``unchanged``."""
        entry.users = max(0, entry.users - 1)
        entry.last_used = time.monotonic()
        if not isinstance(keep_alive, str):
            entry.keep_alive = keep_alive
        if entry.users == 0 and self._ttl(entry) == 0 and entry.state == "loaded":
            with contextlib.suppress(RuntimeError):  # no loop (shutdown): the reaper is gone too
                asyncio.get_running_loop().create_task(self.reap())

    def check_fits(self, entry: ModelEntry) -> None:
        """Refuse at once a model that cannot fit even alone (503 naming the budget)."""
        if entry.estimate > self.budget:
            raise UnavailableError(
                f"Model '{entry.id}' needs an estimated {human(entry.estimate)}, more than "
                f"MODEL_MEMORY_BUDGET ({human(self.budget)}) allows even with every other "
                "model unloaded. Raise MODEL_MEMORY_BUDGET or configure a smaller model "
                "(or a shorter context).",
                retry_after=60,
                code="model_exceeds_memory_budget",
            )
        if self.vram_budget is not None and entry.vram_estimate > self.vram_budget:
            raise UnavailableError(
                f"Model '{entry.id}' needs an estimated {human(entry.vram_estimate)} of GPU "
                f"memory, more than MODEL_VRAM_BUDGET ({human(self.vram_budget)}) allows even "
                "with every other model unloaded. Offload fewer layers (CHAT_N_GPU_LAYERS), "
                "shorten the context or raise MODEL_VRAM_BUDGET.",
                retry_after=60,
                code="model_exceeds_vram_budget",
            )

    async def _ensure_loaded(self, entry: ModelEntry, is_disconnected: Disconnected | None) -> None:
        self.check_fits(entry)
        deadline = time.monotonic() + self.load_timeout
        try:
            await asyncio.wait_for(self._lock.acquire(), self.load_timeout)
        except TimeoutError:
            raise self._busy(entry) from None
        handed_off = False
        try:
            if entry.state == "loaded":
                return  # a concurrent first request loaded it while we waited
            if self.closed:
                raise UnavailableError("The server is shutting down.", code="draining")
            await self._make_room(entry, deadline, is_disconnected)
            # The load owns the lock from here: a waiter that leaves (its task cancelled) must
            # not release the lock under a running load nor leave the model "loading".
            task = asyncio.get_running_loop().create_task(self._load(entry))
            task.add_done_callback(self._load_done)
            handed_off = True
            await asyncio.shield(task)
        finally:
            if not handed_off:
                self._lock.release()

    def _load_done(self, task: asyncio.Task[None]) -> None:
        self._lock.release()
        if not task.cancelled():
            task.exception()  # retrieved: a failure is the waiters' error, logged in _load

    def _busy(self, entry: ModelEntry) -> UnavailableError:
        held = "MODEL_MEMORY_BUDGET"
        if self.vram_budget is not None and self.used + entry.estimate <= self.budget:
            held = "MODEL_VRAM_BUDGET"
        size = self.budget if held == "MODEL_MEMORY_BUDGET" else self.vram_budget or 0
        return UnavailableError(
            f"Model '{entry.id}' cannot be loaded yet: the models holding {held} "
            f"({human(size)}) are in use. Retry shortly.",
            retry_after=5,
            code="model_loading",
        )

    def _evictable(self, keep: ModelEntry) -> list[ModelEntry]:
        idle = [
            e
            for e in self.entries.values()
            if e is not keep and e.state == "loaded" and e.users == 0 and not e.pinned
        ]
        return sorted(idle, key=lambda e: e.last_used)

    async def _make_room(
        self, entry: ModelEntry, deadline: float, is_disconnected: Disconnected | None
    ) -> None:
        while self._over_budget(entry):
            idle = self._evictable(entry)
            if idle:
                victim = idle[0]
                log.info("evicting %s to load %s", victim.id, entry.id)
                self.evictions += 1
                await self._unload(victim)
                continue
            if time.monotonic() >= deadline:
                raise self._busy(entry)
            if is_disconnected is not None and await is_disconnected():
                raise ClientLeftError
            await asyncio.sleep(WAIT_POLL_SECONDS)

    async def _load(self, entry: ModelEntry) -> None:
        entry.state = "loading"
        entry.error = None
        before = rss_bytes()
        started = time.monotonic()
        try:
            entry.engine = await anyio.to_thread.run_sync(entry.load)
        except Exception as exc:  # a broken file is this model's error, not the server's
            entry.state, entry.engine = "error", None
            entry.error = str(exc) or type(exc).__name__
            self.load_failures += 1
            log.error("model %s failed to load: %s", entry.id, entry.error)
            raise UnavailableError(
                f"Model '{entry.id}' failed to load: {entry.error}",
                retry_after=30,
                code="model_load_failed",
            ) from None
        entry.load_seconds = time.monotonic() - started
        entry.measured = max(0, rss_bytes() - before)
        entry.state = "loaded"
        entry.last_used = time.monotonic()
        self.loads += 1
        self.load_seconds_total += entry.load_seconds
        log.info(
            "model %s loaded in %.2fs (estimated %s, resident +%s)",
            entry.id,
            entry.load_seconds,
            human(entry.estimate),
            human(entry.measured),
        )

    async def _unload(self, entry: ModelEntry) -> None:
        engine, entry.engine = entry.engine, None
        entry.state = "unloading"
        try:
            if engine is not None:
                await anyio.to_thread.run_sync(engine.close)
        finally:
            entry.state = "configured"
            entry.measured = None
            self.unloads += 1
            log.info("model %s unloaded", entry.id)

    # -- admin --------------------------------------------------------------------------------

    async def load(self, model_id: str) -> ModelEntry:
        entry = self.get(model_id)
        await self.use(entry)
        self.release(entry)  # loading alone leaves its time-to-live as is
        return entry

    async def unload(self, model_id: str) -> ModelEntry:
        entry = self.get(model_id)
        if entry.pinned:
            raise InvalidRequestError(
                f"Model '{model_id}' is held by the server and cannot be unloaded.",
                param="model",
                code="model_pinned",
            )
        async with self._lock:
            if entry.users:
                raise UnavailableError(
                    f"Model '{model_id}' is in use ({entry.users} request(s)); retry when idle.",
                    retry_after=5,
                    code="model_in_use",
                )
            if entry.state == "loaded":
                await self._unload(entry)
        return entry

    # -- idle unload --------------------------------------------------------------------------

    def start(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_forever())

    def _ttl(self, entry: ModelEntry) -> float:
        """Idle seconds before ``entry`` unloads (``inf``: never; MODEL_IDLE_TTL=0 is never)."""
        if entry.keep_alive is not None:
            return entry.keep_alive
        return self.idle_ttl if self.idle_ttl > 0 else math.inf

    async def reap(self) -> list[str]:
        """Unload every idle model whose time-to-live has passed."""
        now = time.monotonic()
        due = [
            e
            for e in self.entries.values()
            if e.state == "loaded"
            and not e.pinned
            and e.users == 0
            and now - e.last_used >= self._ttl(e)
        ]
        done = []
        if due:
            async with self._lock:
                for entry in due:
                    if entry.state == "loaded" and entry.users == 0:
                        await self._unload(entry)
                        done.append(entry.id)
        return done

    async def _reap_forever(self) -> None:
        while True:
            ttls = [self._ttl(e) for e in self.entries.values()]
            await asyncio.sleep(max(REAP_MIN_SECONDS, min([1.0, *(t / 4 for t in ttls)])))
            try:
                await self.reap()
            except Exception:  # a failing close is logged; the reaper keeps running
                log.exception("idle unload failed")

    async def aclose(self) -> None:
        self.closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None

    def close_all(self) -> None:
        """Shutdown: free every loaded engine (blocking)."""
        for entry in self.entries.values():
            engine, entry.engine = entry.engine, None
            if engine is not None and not entry.pinned:
                engine.close()
            entry.state = "configured"
