"""Per-key, per-bucket rate limits on the maintained ``limits`` library.

Each bucket (embed, summarize, chat, conversation) is independent; the window is keyed by the
caller's key *name* (``keys.Principal``; never the secret), with that key's own limits where
``egemma keys add --rpm/--limit`` set them, the configured ones otherwise (the client address
only when unauthenticated). Over the limit → 429 with
``Retry-After`` and the phrase existing clients parse: "Rate limit exceeded. Try again in N
seconds.".
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request
from limits import RateLimitItemPerSecond
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from egemma.errors import RateLimitError
from egemma.keys import BUCKETS, Limit, Principal
from egemma.settings import LimitSettings


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
        storage = storage_from_string(settings.rate_limit_storage_uri)
        if not isinstance(storage, Storage):
            raise ValueError("RATE_LIMIT_STORAGE_URI must name an async storage (async+…://)")
        self.storage: Storage = storage
        self._limiter = MovingWindowRateLimiter(self.storage)
        self._own: dict[tuple[int, int], RateLimitItemPerSecond] = {}

    async def hit(self, bucket: str, principal: str, own: Limit | None = None) -> None:
        """Count one call of ``principal`` in ``bucket``; ``own`` replaces the bucket's limit."""
        item = self._items[bucket] if own is None else self._item(own)
        if await self._limiter.hit(item, bucket, principal):
            return
        stats = await self._limiter.get_window_stats(item, bucket, principal)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimitError(retry_after)

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
