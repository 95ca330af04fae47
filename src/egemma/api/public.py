"""Public routes: no key needed. ``/``, ``/health``, ``/ready``, ``/rate-limits``."""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from egemma import __version__
from egemma.api.deps import app_state
from egemma.runtime import Engines
from egemma.security import is_admin
from egemma.state import AppState
from egemma.store.base import Store, StoreUnavailableError

router = APIRouter(tags=["service"])


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/docs", status_code=307)


# An absolute (or home-relative) path inside a message: replaced by its last part on the public
# /health, which must not map the host's file system (issue 18, item 15).
_PATH = re.compile(r"(?<![\w.:/])~?/[^\s'\"(),;]*")


def _public(text: str) -> str:
    return _PATH.sub(lambda m: os.path.basename(m.group(0).rstrip("/")) or "/", text)


def _entry(engines: Engines, key: str, full: bool) -> dict[str, Any]:
    status = engines.capability(key)
    entry: dict[str, Any] = {"name": status.name, "status": status.status}
    if status.reason:
        entry["reason"] = status.reason if full else _public(status.reason)
    if status.context_length is not None:
        entry["context_length"] = status.context_length
    for name, value in status.detail.items():
        public = isinstance(value, str) and not full
        entry[name] = _public(value) if public else value
    return entry


def _store_entry(store: Store) -> dict[str, Any]:
    health = store.health()
    entry: dict[str, Any] = {"status": health.status, "backend": getattr(store, "kind", "sqlite")}
    if health.reason:
        entry["reason"] = health.reason
    return entry


def _redis_entry(state: AppState) -> dict[str, Any] | None:
    """The shared Redis (caches, rate limits) when configured: last known state, no I/O.
    Both uses are fail-open, so a Redis that is away degrades, never stops, the replica."""
    levels = [c.shared for c in (state.services.caches() if state.services else []) if c.shared]
    limiter = state.rate_limiter
    if not levels and not limiter.shared:
        return None
    entry: dict[str, Any] = {}
    if levels:
        down = [level.last_error for level in levels if level.last_error]
        entry["cache"] = {"status": "error", "reason": down[0]} if down else {"status": "ok"}
    if limiter.shared:
        entry["rate_limits"] = (
            {"status": "error", "reason": limiter.storage_down}
            if limiter.storage_down
            else {"status": "ok"}
        )
    entry["status"] = "error" if any(v["status"] == "error" for v in entry.values()) else "ok"
    return entry


async def _probe_redis(state: AppState) -> dict[str, Any] | None:
    """For /ready: ping each configured Redis use now, then report like /health."""
    for cache in state.services.caches() if state.services else []:
        if cache.shared is not None:
            await anyio.to_thread.run_sync(cache.shared.ping)
    limiter = state.rate_limiter
    if limiter.shared:
        try:
            ok = await limiter.storage.check()
        except Exception as exc:  # noqa: BLE001 (reported)
            ok = False
            limiter.storage_down = type(exc).__name__
        if ok:
            limiter.storage_down = None
        elif limiter.storage_down is None:
            limiter.storage_down = "unreachable"
    return _redis_entry(state)


@router.get("/health", summary="Per-capability status")
async def health(request: Request) -> dict[str, Any]:
    """Reads what is known (no I/O), so it answers at once however busy the server is; the
    store's entry is its last known state (``/ready`` and every store operation refresh it).

    Public callers see file names, never absolute paths; an admin key sees the full paths."""
    state = app_state(request)
    engines = state.engines
    full = is_admin(request)
    body: dict[str, Any] = {"version": __version__}
    states = []
    for key, legacy in engines.capability_keys().items():
        body[legacy] = _entry(engines, key, full)
        states.append(body[legacy]["status"])
    body["store"] = _store_entry(state.store)
    if engines.registry is not None:
        body["models"] = engines.registry.describe()
    states.append(body["store"]["status"])
    redis = _redis_entry(state)
    if redis is not None:
        body["redis"] = redis
        states.append(redis["status"])
    if state.draining:
        overall = "draining"
    elif "error" in states:
        overall = "degraded"
    elif "not_loaded" in states:
        overall = "starting"
    else:
        overall = "ok"
    return {"status": overall, **body}


@router.get("/ready", summary="200 once every enabled capability and the store are usable")
async def ready(request: Request) -> JSONResponse:
    state = app_state(request)
    engines = state.engines
    waiting = [
        key
        for key in engines.capability_keys()
        if engines.capability(key).status not in ("loaded", "disabled")
    ]
    if state.draining:
        return JSONResponse({"ready": False, "reason": "draining"}, status_code=503)
    if state.started:
        with contextlib.suppress(StoreUnavailableError):  # busy is not broken; health says which
            await state.store.check()
    reasons = {key: _public(engines.capability(key).reason or "") or None for key in waiting}
    store = state.store.health()
    if store.status != "ok":
        waiting.append("store")
        reasons["store"] = store.reason
    redis = await _probe_redis(state) if state.started else None
    extra = {"store": _store_entry(state.store)}
    if redis is not None:
        extra["redis"] = redis  # reported; fail-open, so never a reason to be unready
    if waiting or not state.started:
        body = {"ready": False, "not_ready": waiting, "reasons": reasons, **extra}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"ready": True, **extra})


# HEAD probes (load balancers, uptime checkers): the same status, no body, not in the schema.
@router.head("/health", include_in_schema=False)
async def health_head() -> Response:
    return Response(status_code=200)


@router.head("/ready", include_in_schema=False)
async def ready_head(request: Request) -> Response:
    return Response(status_code=(await ready(request)).status_code)


@router.get("/rate-limits", summary="Configured rate limits per bucket")
async def rate_limits(request: Request) -> dict[str, dict[str, int]]:
    limits: dict[str, dict[str, int]] = app_state(request).rate_limiter.describe()
    return limits
