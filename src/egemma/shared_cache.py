"""The shared second cache level: Redis (``CACHE_URL``), fail-open, for every replica at once.

Values are the caches' own small shapes (dicts, lists, strings, numbers, and the embedding
cache's ``(tokens, float32 bytes)`` tuple), written as tagged JSON, never pickle: whoever can
write to a shared Redis must not be able to run code in every replica. A value that does not
decode is a miss.

Fail-open: a Redis that is away, slow (``CACHE_TIMEOUT``) or answering errors costs one logged
line and an ``errors`` count, and the request is served uncached; Redis is then left alone for
``CACHE_RETRY_SECONDS`` so a dead server does not add its timeout to every request.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from typing import Any

from egemma.settings import CacheSettings

log = logging.getLogger(__name__)

PREFIX = "egemma:cache:v1:"


def pack(value: Any) -> bytes:
    return json.dumps(_tag(value), separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


def unpack(raw: bytes) -> Any:
    return _untag(json.loads(raw.decode("utf-8", "surrogatepass")))


def _tag(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return {"$t": [_tag(v) for v in value]}
    if isinstance(value, list):
        return [_tag(v) for v in value]
    if isinstance(value, dict):
        if any(k in ("$b", "$t", "$d") for k in value):
            return {"$d": {str(k): _tag(v) for k, v in value.items()}}
        return {str(k): _tag(v) for k, v in value.items()}
    return value


def _untag(value: Any) -> Any:
    if isinstance(value, list):
        return [_untag(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"$b"}:
            return base64.b64decode(value["$b"])
        if set(value) == {"$t"}:
            return tuple(_untag(v) for v in value["$t"])
        if set(value) == {"$d"}:
            return {k: _untag(v) for k, v in value["$d"].items()}
        return {k: _untag(v) for k, v in value.items()}
    return value


class RedisLevel:
    """get/set on one Redis namespace (``egemma:cache:v1:<cache name>:``); blocking calls."""

    def __init__(self, name: str, settings: CacheSettings) -> None:
        import redis

        assert settings.url is not None
        self.name = name
        self.ttl = settings.ttl_seconds or None
        self.retry_seconds = settings.retry_seconds
        self._client = redis.Redis.from_url(
            settings.url.get_secret_value(),
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
            health_check_interval=30,
        )
        self._prefix = f"{PREFIX}{name}:"
        self._down_until = 0.0
        self._lock = threading.Lock()
        self.errors = 0
        self.last_error: str | None = None

    @property
    def up(self) -> bool:
        return self.last_error is None

    def get(self, key: str) -> Any | None:
        if self._resting():
            return None
        try:
            raw = self._client.get(self._prefix + key)
        except Exception as exc:  # redis.RedisError, OSError: fail open
            self._failed("read", exc)
            return None
        self._ok()
        if not isinstance(raw, bytes):
            return None
        try:
            return unpack(raw)
        except (ValueError, TypeError, UnicodeDecodeError):
            return None  # not ours, or damaged: a miss

    def set(self, key: str, value: Any) -> None:
        if self._resting():
            return
        try:
            self._client.set(self._prefix + key, pack(value), ex=self.ttl)
        except Exception as exc:  # fail open: the answer is still served
            self._failed("write", exc)
            return
        self._ok()

    def ping(self) -> bool:
        """A probe for /ready (also ends a rest early when Redis is back)."""
        try:
            self._client.ping()
        except Exception as exc:  # noqa: BLE001 (reported, not raised)
            self._failed("ping", exc)
            return False
        with self._lock:
            self._down_until = 0.0
        self._ok()
        return True

    def close(self) -> None:
        try:
            self._client.close()
        except Exception as exc:  # closing must not stop shutdown
            log.warning("%s cache: closing Redis failed (%s)", self.name, type(exc).__name__)

    def _resting(self) -> bool:
        return time.monotonic() < self._down_until

    def _failed(self, what: str, exc: Exception) -> None:
        with self._lock:
            self.errors += 1
            first = self.last_error is None
            self.last_error = type(exc).__name__
            self._down_until = time.monotonic() + self.retry_seconds
        if first:
            log.warning(
                "%s cache: Redis %s failed (%s); serving uncached, retrying in %.0fs",
                self.name,
                what,
                type(exc).__name__,
                self.retry_seconds,
            )

    def _ok(self) -> None:
        if self.last_error is not None:
            with self._lock:
                self.last_error = None
            log.warning("%s cache: Redis usable again", self.name)
