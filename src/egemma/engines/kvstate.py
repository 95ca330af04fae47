"""KV slot state on disk: an evicted pinned slot is written with llama.cpp's sequence state
save (``llama_state_seq_save_file``) and read back when its conversation returns, also after a
restart.

Files live under ``DATA_DIR/kv-slots/<model fingerprint>/<sha256(pin)>.kv``: the fingerprint
(GGUF path, size and mtime) keeps one model's state away from another's. The directory is kept
under ``CHAT_KV_DISK_BYTES`` by deleting the least recently written files. A file llama.cpp
refuses (truncated, foreign, another version) is logged and deleted, never fatal.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def fingerprint(model_path: Path) -> str:
    stat = model_path.stat()
    raw = f"{model_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


class KvStateFiles:
    """Save and restore one context's sequences by pin key. Call from the thread that owns the
    context."""

    def __init__(self, llama_cpp: Any, ctx: Any, root: Path, budget: int, n_ctx: int) -> None:
        self._lc = llama_cpp
        self._ctx = ctx
        self.root = root
        self.budget = budget
        self._n_ctx = n_ctx
        if budget > 0:
            root.mkdir(parents=True, exist_ok=True)

    def path(self, pin: str) -> Path:
        return self.root / (hashlib.sha256(pin.encode()).hexdigest() + ".kv")

    def has(self, pin: str) -> bool:
        return self.budget > 0 and self.path(pin).is_file()

    def save(self, pin: str, seq_id: int, tokens: list[int]) -> None:
        if self.budget <= 0 or not tokens:
            return
        target = self.path(pin)
        partial = target.with_suffix(".part")
        array = (self._lc.llama_token * len(tokens))(*tokens)
        written = self._lc.llama_state_seq_save_file(
            self._ctx, str(partial).encode(), seq_id, array, len(tokens)
        )
        if not written:
            log.warning("could not write KV state %s", partial)
            partial.unlink(missing_ok=True)
            return
        partial.replace(target)  # whole files only: a crash mid-write leaves no torn state
        self._trim()

    def load(self, pin: str, seq_id: int) -> list[int] | None:
        """Restore ``pin``'s state into ``seq_id`` (which must be empty); its tokens or None."""
        source = self.path(pin)
        if not self.has(pin):
            return None
        capacity = self._n_ctx
        array = (self._lc.llama_token * capacity)()
        count = ctypes.c_size_t(0)
        read = self._lc.llama_state_seq_load_file(
            self._ctx, str(source).encode(), seq_id, array, capacity, ctypes.byref(count)
        )
        if not read or count.value == 0:
            log.warning("ignoring unreadable KV state file %s", source)
            source.unlink(missing_ok=True)
            self._lc.llama_memory_seq_rm(self._lc.llama_get_memory(self._ctx), seq_id, -1, -1)
            return None
        source.touch()
        return list(array[: count.value])

    def _trim(self) -> None:
        files = sorted(self.root.glob("*.kv"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        while files and total > self.budget:
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)
