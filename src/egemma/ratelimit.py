"""Per-key, per-bucket rate limits on the maintained ``limits`` library.

Each bucket (embed, summarize, chat, conversation) is independent; the window is keyed by the
caller's key *name* (``keys.Principal``; never the secret), with that key's own limits where
``egemma keys add --rpm/--limit`` set them, the configured ones otherwise (the client address
only when unauthenticated). Over the limit → 429 with
``Retry-After`` and the phrase existing clients parse: "Rate limit exceeded. Try again in N
seconds.".
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from limits import RateLimitItemPerSecond
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from egemma.errors import RateLimitError
from egemma.keys import BUCKETS, Limit, Principal
from egemma.settings import LimitSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bucket:
    calls: int
    seconds: int


class RateLimiter:
    """Moving-window limits per (bucket, principal)."""

    def __init__(self, settings: LimitSettings) -> None:
        self.buckets = {
            name: Bucket(
                calls=getattr(settings, f"{name}_rate_limit_calls"),
                seconds=getattr(settings, f"{name}_rate_limit_seconds"),
            )
            for name in BUCKETS
        }
        self._items = {
            name: RateLimitItemPerSecond(b.calls, b.seconds) for name, b in self.buckets.items()
        }
        uri = settings.rate_limit_storage_uri
        options: dict[str, Any] = {}
        if uri.startswith("async+redis"):
            # redis-py (the one Redis client eGemma ships), with bounded waits.
            options = {
                "implementation": "redispy",
                "socket_timeout": 0.5,
                "socket_connect_timeout": 0.5,
            }
        storage = storage_from_string(uri, **options)
        if not isinstance(storage, Storage):
            raise ValueError("RATE_LIMIT_STORAGE_URI must name an async storage (async+…://)")
        self.storage: Storage = storage
        self.shared = not uri.startswith("async+memory")
        self._limiter = MovingWindowRateLimiter(self.storage)
        # Fail-open, but not limitless: while a shared storage is away, each replica counts in
        # its own memory (logged once, counted in /metrics as storage_errors).
        self._fallback = MovingWindowRateLimiter(storage_from_string("async+memory://"))
        self.storage_errors = 0
        self.storage_down: str | None = None
        self._own: dict[tuple[int, int], RateLimitItemPerSecond] = {}

    async def hit(self, bucket: str, principal: str, own: Limit | None = None) -> None:
        """Count one call of ``principal`` in ``bucket``; ``own`` replaces the bucket's limit."""
        item = self._items[bucket] if own is None else self._item(own)
        limiter = self._limiter
        try:
            allowed = await limiter.hit(item, bucket, principal)
            if not allowed:
                stats = await limiter.get_window_stats(item, bucket, principal)
        except Exception as exc:  # redis errors, timeouts, OSError: never a 500
            self._storage_failed(exc)
            limiter = self._fallback
            allowed = await limiter.hit(item, bucket, principal)
            if not allowed:
                stats = await limiter.get_window_stats(item, bucket, principal)
        else:
            if self.storage_down is not None:
                log.warning("rate-limit storage usable again")
                self.storage_down = None
        if allowed:
            return
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimitError(retry_after)

    def _storage_failed(self, exc: Exception) -> None:
        self.storage_errors += 1
        if self.storage_down is None:
            log.warning(
                "rate-limit storage failed (%s); counting in this replica's memory until it is "
                "back",
                type(exc).__name__,
            )
        self.storage_down = type(exc).__name__

    def _item(self, own: Limit) -> RateLimitItemPerSecond:
        key = (own.calls, own.seconds)
        item = self._own.get(key)
        if item is None:
            item = self._own[key] = RateLimitItemPerSecond(own.calls, own.seconds)
        return item

    def describe(self) -> dict[str, dict[str, int]]:
        """The original's ``GET /rate-limits`` shape."""
        return {name: {"calls": b.calls, "seconds": b.seconds} for name, b in self.buckets.items()}


def rate_limit(bucket: str) -> Callable[[Request], Awaitable[None]]:
    """FastAPI dependency for one bucket; runs after authentication."""
    if bucket not in BUCKETS:
        raise ValueError(f"unknown rate-limit bucket {bucket!r}")

    async def dependency(request: Request) -> None:
        limiter: RateLimiter = request.app.state.egemma.rate_limiter
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None:
            address = request.client.host if request.client else "unknown"
            await limiter.hit(bucket, "ip:" + address)
            return
        await limiter.hit(bucket, "key:" + principal.name, principal.limits.get(bucket))

    dependency.__name__ = f"rate_limit_{bucket}"
    return dependency
