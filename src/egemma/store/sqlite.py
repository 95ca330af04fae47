"""The embedded SQLite store: WAL, a busy budget, short transactions, versioned migrations.

Durability: WAL with ``synchronous=FULL`` (default, ``STORE_SYNCHRONOUS``) fsyncs the log on every
commit, so a committed row survives ``kill -9`` and power loss; ``NORMAL`` survives ``kill -9``
(the log is written before the commit returns) but may lose the last commits on power loss.

Concurrency: blocking sqlite3 calls run in worker threads (``anyio.to_thread``), each on a
connection borrowed from a small pool. Writes take the write lock up front (``BEGIN IMMEDIATE``)
so a read-then-write transaction never fails half way with ``SQLITE_BUSY_SNAPSHOT``. A locked
database is waited for (``busy_timeout``) and retried with backoff until ``STORE_BUSY_TIMEOUT``
seconds have passed; then ``StoreUnavailableError`` (503 + ``Retry-After``), never a 500
(``reliability.md`` §5). Closing the last connection checkpoints and removes the ``-wal`` file.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import anyio.to_thread

from egemma.datadir import DIR_MODE, owner_only
from egemma.settings import Settings
from egemma.store.base import BROKEN_MESSAGE, Owner, StoreHealth, StoreUnavailableError
from egemma.store.migrations import LATEST, MIGRATIONS
from egemma.store.sqlite_background import SqliteBackground
from egemma.store.sqlite_tables import SqliteConversations, SqliteResponses

log = logging.getLogger(__name__)

T = TypeVar("T")
Synchronous = Literal["NORMAL", "FULL"]

_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
SQLITE_MAGIC = b"SQLite format 3\x00"


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer eGemma; refuse rather than corrupt it."""


class StoreReplacedError(RuntimeError):
    """The file at the store's path is no longer the one the server opened."""


class SqliteStore:
    """``Store`` on one SQLite file; safe to share across threads and event loops."""

    kind = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout: float = 5.0,
        synchronous: Synchronous = "FULL",
        pool_size: int = 8,
    ) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        self.responses = SqliteResponses(self)
        self.conversations = SqliteConversations(self)
        self.background = SqliteBackground(self)
        self._pool: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._pool_size = max(1, pool_size)
        self._connections = 0
        self._lock = threading.Lock()
        self._opened = False
        self._closed = False
        self._health = StoreHealth()
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the opened file

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file if needed, migrate it and probe it (``check``)."""
        await self.check()

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self.close_sync)

    def close_sync(self) -> None:
        with self._lock:
            self._closed = True
        while True:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                break
            self._close_connection(conn)

    def scoped(self, owner: Owner) -> SqliteScope:
        return SqliteScope(self, owner)

    # -- health -------------------------------------------------------------------------------

    def health(self) -> StoreHealth:
        return self._health

    async def check(self) -> None:
        """Open if needed, then a read transaction that reads the schema (microseconds)."""
        await anyio.to_thread.run_sync(
            self._with_retry, lambda d: self._transact(self._probe, False, d)
        )
        # Only a probe clears an error: a read served from the page cache or a write that went
        # to the WAL says nothing about a database file that is corrupt underneath.
        self._mark_ok()

    def _probe(self, conn: sqlite3.Connection) -> None:
        """A read that fails on a corrupt file, a missing table or a schema changed underneath.

        The file's header is read directly too: an open connection serves pages from its cache
        and would not notice garbage written over the file."""
        with open(self.path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
        if head and head != SQLITE_MAGIC:
            raise sqlite3.DatabaseError("file is not a database (its header was overwritten)")
        refuse_newer(conn)
        for table in ("responses", "conversations"):
            conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()

    def _mark_broken(self, reason: str) -> None:
        if self._health.reason != reason:  # one line per new problem, not one per request
            log.error(
                "store %s unusable: %s; serving without it: stored responses and conversations "
                "answer 503 until it is fixed (nothing on disk was changed)",
                self.path,
                reason,
            )
        self._health = StoreHealth("error", reason)

    def _mark_ok(self) -> None:
        if self._health.status == "error":
            log.warning("store %s usable again", self.path)
        self._health = StoreHealth("ok")

    def _check_file(self) -> None:
        """A store file removed or replaced under a running server (restore, ``rm``, a volume
        swap) would otherwise keep being served from the old, unlinked inode and lose every write
        at the next restart."""
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._file_id:
            raise StoreReplacedError(
                f"{self.path.name} was removed or replaced while the server ran; restart eGemma"
            )

    # -- running work ---------------------------------------------------------------------------

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a read transaction (a consistent snapshot) off the event loop."""
        return await anyio.to_thread.run_sync(
            self._with_retry, lambda d: self._transact(fn, False, d)
        )

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one short write transaction, retried while the database is locked."""
        return await anyio.to_thread.run_sync(
            self._with_retry, lambda d: self._transact(fn, True, d)
        )

    def _transact(self, fn: Callable[[sqlite3.Connection], T], write: bool, deadline: float) -> T:
        conn = self._acquire(deadline)
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result
        finally:
            self._release(conn)

    def _with_retry(self, attempt: Callable[[float], T]) -> T:
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.005
        while True:
            try:
                result = attempt(deadline)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF not in _BUSY_CODES:
                    raise self._broken(exc) from exc
                self._back_off(deadline, delay, exc)
                delay = min(delay * 2, 0.2)
                continue
            except (sqlite3.InterfaceError, sqlite3.IntegrityError, sqlite3.ProgrammingError):
                raise
            except (sqlite3.DatabaseError, OSError, SchemaTooNewError, StoreReplacedError) as exc:
                raise self._broken(exc) from exc  # corrupt, too new, replaced, disk, perms
            return result

    def _back_off(self, deadline: float, delay: float, exc: Exception) -> None:
        """Sleep before the next attempt on a locked database, or 503 when out of budget."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.warning("store locked for %.1fs; answering 503", self.busy_timeout)
            raise StoreUnavailableError() from exc
        time.sleep(min(delay, remaining))

    def _broken(self, exc: Exception) -> StoreUnavailableError:
        self._mark_broken(self._reason(exc))
        return StoreUnavailableError(BROKEN_MESSAGE, retry_after=5)

    def _reason(self, exc: Exception) -> str:
        """Why, without the path (``/health`` is public)."""
        if isinstance(exc, SchemaTooNewError | StoreReplacedError):
            return str(exc)
        if self.path.is_dir():
            return f"{self.path.name} is a directory, not a database file"
        if isinstance(exc, sqlite3.Error):
            name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
            return f"{exc} ({name})"
        if isinstance(exc, OSError):
            return exc.strerror or type(exc).__name__
        return str(exc)

    # -- connections ----------------------------------------------------------------------------

    def _acquire(self, deadline: float) -> sqlite3.Connection:
        self._ensure_open()
        self._check_file()
        remaining = max(0.0, deadline - time.monotonic())
        conn = self._take(remaining)
        # Let SQLite's own busy handler wait, but never beyond this call's budget.
        conn.execute(f"PRAGMA busy_timeout = {int(remaining * 1000)}")
        return conn

    def _take(self, remaining: float) -> sqlite3.Connection:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._connections < self._pool_size:
                self._connections += 1
                create = True
            else:
                create = False
        if create:
            try:
                return self._connect()
            except BaseException:
                with self._lock:
                    self._connections -= 1
                raise
        try:
            return self._pool.get(timeout=max(remaining, 0.001))
        except queue.Empty:
            raise StoreUnavailableError() from None

    def _release(self, conn: sqlite3.Connection) -> None:
        if self._closed:
            self._close_connection(conn)
        else:
            self._pool.put(conn)

    def _close_connection(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            self._connections -= 1
        try:
            conn.close()
        except sqlite3.Error as exc:
            log.warning("closing a store connection failed: %s", exc)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    # -- schema ---------------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError("The store is closed (shutting down).")
        if self._opened:
            return
        with self._lock:
            if self._opened:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            self._owner_only_files()
            conn = self._connect()
            try:
                busy_ms = int(self.busy_timeout * 1000)
                conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
                # Read the version before anything writes: a newer schema is left untouched
                # (not even its journal mode changes).
                refuse_newer(conn)
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("store %s: journal_mode is %s, not wal", self.path, mode)
                migrate(conn)
                st = os.stat(self.path)
            finally:
                conn.close()
            self._file_id = (st.st_dev, st.st_ino)
            self._opened = True
            log.info("store ready at %s (schema v%d)", self.path, LATEST)

    def _owner_only_files(self) -> None:
        # Stored data is nobody else's business: the database 0600 before SQLite creates it, so
        # its -wal and -shm (which SQLite gives the database's mode) are 0600 too; leftovers from
        # an older, laxer eGemma are tightened.
        owner_only(self.path)
        for suffix in ("-wal", "-shm"):
            extra = self.path.with_name(self.path.name + suffix)
            if extra.exists():
                owner_only(extra)


class SqliteScope:
    """``store.scoped(owner)``: the same database and connections, seen as one owner."""

    kind = "sqlite"

    def __init__(self, store: SqliteStore, owner: Owner) -> None:
        self._store = store
        self.owner = owner
        self.responses = SqliteResponses(store, owner)
        self.conversations = SqliteConversations(store, owner)
        self.background = store.background

    def scoped(self, owner: Owner) -> SqliteScope:
        return SqliteScope(self._store, owner)

    async def open(self) -> None:
        await self._store.open()

    async def close(self) -> None:
        """The store owns the connections; a view has nothing to close."""

    def health(self) -> StoreHealth:
        return self._store.health()

    async def check(self) -> None:
        await self._store.check()


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def refuse_newer(conn: sqlite3.Connection) -> None:
    current = schema_version(conn)
    if current > LATEST:
        raise SchemaTooNewError(
            f"store schema v{current} is newer than this eGemma (v{LATEST}); upgrade eGemma"
        )


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations in one transaction each; return the resulting version."""
    refuse_newer(conn)
    for migration in MIGRATIONS:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            if schema_version(conn) >= migration.version:
                conn.execute("COMMIT")
                continue
            for statement in migration.sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {migration.version}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        log.info("store migrated to v%d (%s)", migration.version, migration.name)
    return schema_version(conn)


def store_from_settings(settings: Settings) -> SqliteStore:
    """The store the app uses: ``STORE_PATH`` or ``DATA_DIR/egemma.db``."""
    path = settings.store.path or settings.server.data_dir / "egemma.db"
    return SqliteStore(
        path, busy_timeout=settings.store.busy_timeout, synchronous=settings.store.synchronous
    )
