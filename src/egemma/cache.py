"""Two-level cache: an in-memory LRU in front of a ``diskcache`` store, fail-open.

Any disk problem (corrupt file, full disk, a lock held elsewhere) is logged and counted, and the
caller is served uncached: a cache never turns a good request into an error. With ``CACHE_URL``
the second level is a Redis shared by every replica (``shared_cache.py``, just as fail-open)
instead of this replica's disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from egemma.shared_cache import RedisLevel

log = logging.getLogger(__name__)


def cache_key(**parts: Any) -> str:
    """SHA-256 of the canonical JSON of the parts (model identity, parameters, input)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


class TwoLevelCache:
    """LRU (``lru_size`` entries) over an optional disk cache (``disk_bytes``; 0 disables it)."""

    def __init__(
        self,
        name: str,
        directory: Path | None,
        lru_size: int,
        disk_bytes: int = 0,
        shared: RedisLevel | None = None,
    ) -> None:
        self.name = name
        self.lru_size = lru_size
        self._lru: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self._errors = 0
        self._disk: Any = None
        self.shared = shared
        if shared is None and directory is not None and disk_bytes > 0:
            self._disk = self._open_disk(directory, disk_bytes)

    @property
    def errors(self) -> int:
        """Second-level failures served uncached (disk or Redis)."""
        return self._errors + (self.shared.errors if self.shared is not None else 0)

    @property
    def remote(self) -> bool:
        """True when a miss in memory costs a network round trip (keep it off the event loop)."""
        return self.shared is not None

    def _open_disk(self, directory: Path, disk_bytes: int) -> Any:
        import diskcache

        for attempt in range(2):
            try:
                directory.mkdir(parents=True, exist_ok=True)
                return diskcache.Cache(
                    str(directory),
                    size_limit=disk_bytes,
                    timeout=0.2,
                    eviction_policy="least-recently-used",
                )
            except (sqlite3.DatabaseError, OSError) as exc:
                self._errors += 1
                if attempt == 0 and isinstance(exc, sqlite3.DatabaseError):
                    aside = directory.with_name(f"{directory.name}.corrupt-{int(time.time())}")
                    log.warning(
                        "%s cache is corrupt (%s); moved aside to %s", self.name, exc, aside
                    )
                    try:
                        directory.rename(aside)
                    except OSError:
                        break
                    continue
                break
        log.warning("%s disk cache unavailable; serving with the memory cache only", self.name)
        return None

    def get(self, key: str) -> Any | None:
        with self._lock:
            if key in self._lru:
                self._lru.move_to_end(key)
                self.hits += 1
                return self._lru[key]
        value = None
        if self.shared is not None:
            value = self.shared.get(key)
        elif self._disk is not None:
            try:
                value = self._disk.get(key, default=None, retry=False)
            except Exception as exc:  # diskcache.Timeout, sqlite3 errors, OSError: fail open
                self._failed("read", exc)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._remember(key, value)
        return value

    def set(self, key: str, value: Any) -> None:
        self._remember(key, value)
        if self.shared is not None:
            self.shared.set(key, value)
        elif self._disk is not None:
            try:
                self._disk.set(key, value, retry=False)
            except Exception as exc:  # fail open: the answer is still served
                self._failed("write", exc)

    def remember(self, key: str, value: Any) -> None:
        """Memory level only; for callers that write the disk level later, off their hot path."""
        self._remember(key, value)

    def _remember(self, key: str, value: Any) -> None:
        if self.lru_size <= 0:
            return
        with self._lock:
            self._lru[key] = value
            self._lru.move_to_end(key)
            while len(self._lru) > self.lru_size:
                self._lru.popitem(last=False)

    def _failed(self, what: str, exc: Exception) -> None:
        self._errors += 1
        log.warning(
            "%s cache %s failed (%s); serving uncached", self.name, what, type(exc).__name__
        )

    def close(self) -> None:
        if self.shared is not None:
            self.shared.close()
        if self._disk is not None:
            try:
                self._disk.close()
            except Exception as exc:  # closing must not stop shutdown
                self._failed("close", exc)
            self._disk = None


def shared_level(name: str, settings: Any) -> RedisLevel | None:
    """The Redis level for cache ``name`` when ``CACHE_URL`` is set (``settings``: Settings)."""
    if settings.cache.url is None:
        return None
    from egemma.shared_cache import RedisLevel

    return RedisLevel(name, settings.cache)
