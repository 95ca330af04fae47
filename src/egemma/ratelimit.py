"""Per-key, per-bucket rate limits on the maintained ``limits`` library.

Each bucket (embed, summarize, chat, conversation) is independent; the key is the hash of the
caller's API key (the client address only when unauthenticated). Over the limit → 429 with
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
from egemma.settings import LimitSettings

BUCKETS = ("embed", "summarize", "chat", "conversation")


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

    async def hit(self, bucket: str, principal: str) -> None:
        item = self._items[bucket]
        if await self._limiter.hit(item, bucket, principal):
            return
        stats = await self._limiter.get_window_stats(item, bucket, principal)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimitError(retry_after)

    def describe(self) -> dict[str, dict[str, int]]:
        """The original's ``GET /rate-limits`` shape."""
        return {name: {"calls": b.calls, "seconds": b.seconds} for name, b in self.buckets.items()}


def rate_limit(bucket: str) -> Callable[[Request], Awaitable[None]]:
    """FastAPI dependency for one bucket; runs after authentication."""
    if bucket not in BUCKETS:
        raise ValueError(f"unknown rate-limit bucket {bucket!r}")

    async def dependency(request: Request) -> None:
        principal = getattr(request.state, "principal", None)
        if principal is None:
            principal = "ip:" + (request.client.host if request.client else "unknown")
        limiter: RateLimiter = request.app.state.egemma.rate_limiter
        await limiter.hit(bucket, principal)

    dependency.__name__ = f"rate_limit_{bucket}"
    return dependency
