"""The PostgreSQL store: one database shared by every replica, behind the same ``Store`` Protocol.

``STORE_URL=postgresql://…`` selects it (``store/factory.py``); SQLite stays the embedded default.

Durability: a write is acknowledged only after its ``COMMIT`` returned, and a connection whose
server runs with ``synchronous_commit = off`` is switched back to ``on``, so an acknowledged row
is on the database server's disk and survives a crash of the replica, of its connection and of
the server. A commit whose answer is lost (the connection died during ``COMMIT``) is a 503: its
outcome is unknown, so it is neither reported done nor replayed.

Concurrency: a ``psycopg_pool.AsyncConnectionPool`` per store (``STORE_POOL_SIZE``), one short
transaction per operation. A failure before ``COMMIT`` (the server restarting, a connection cut,
a serialization failure, a lock wait past ``lock_timeout``) is retried on a fresh connection with
backoff until ``STORE_BUSY_TIMEOUT`` seconds have passed; then ``StoreUnavailableError`` (503 +
``Retry-After``), never a 500. The pool reconnects by itself when the server is back.

Ordering: the ``seq`` identity columns give the insertion order, as on SQLite. Appends to one
conversation lock its row, so items of a conversation commit in ``seq`` order and a reader
paginating with a cursor never skips an item committed later with a smaller ``seq``; conversation
creation takes a transaction-level advisory lock for the same reason.

Migrations: the numbered migrations of ``store/migrations`` (their ``POSTGRES`` text), applied
under an advisory lock (replicas starting together migrate once), the version kept in the
``schema_version`` table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from egemma.store.base import BROKEN_MESSAGE, Owner, StoreHealth, StoreUnavailableError
from egemma.store.migrations import LATEST, MIGRATIONS
from egemma.store.postgres_background import PostgresBackground
from egemma.store.postgres_tables import PostgresConversations, PostgresResponses
from egemma.store.sqlite import SchemaTooNewError

log = logging.getLogger(__name__)

T = TypeVar("T")
Conn = Any  # psycopg.AsyncConnection; psycopg is imported lazily (the ``postgres`` extra)
Work = Callable[[Conn], Awaitable[T]]

# pg_advisory_xact_lock keys: one for migrations, one for conversation creation ("eGemma" + n).
MIGRATION_LOCK = 0x6547656D6D610001
CONVERSATION_LOCK = 0x6547656D6D610002

# SQLSTATE classes worth another attempt: connection exceptions, serialization/deadlock,
# lock_timeout and query cancel, server shutdown / starting up.
_RETRY_STATES = ("08", "40", "55P03", "57014", "57P01", "57P02", "57P03")


class PostgresStore:
    """``Store`` on one PostgreSQL database; its pool belongs to the event loop that opens it."""

    kind = "postgresql"

    def __init__(self, url: str, *, busy_timeout: float = 5.0, pool_size: int = 10) -> None:
        self.url = url
        self.busy_timeout = busy_timeout
        self.pool_size = max(1, pool_size)
        self.responses = PostgresResponses(self)
        self.conversations = PostgresConversations(self)
        self.background = PostgresBackground(self)
        self._pool: Any = None
        self._migrated = False
        self._closed = False
        self._opening = anyio.Lock()
        self._health = StoreHealth()

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the pool, migrate and probe (``check``)."""
        await self.check()

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close(timeout=5.0)

    def scoped(self, owner: Owner) -> PostgresScope:
        return PostgresScope(self, owner)

    # -- health ---------------------------------------------------------------------------------

    def health(self) -> StoreHealth:
        return self._health

    async def check(self) -> None:
        """A read of ``schema_version`` (one round trip); clears an earlier error."""
        await self.read(self._probe)
        self._mark_ok()

    async def _probe(self, conn: Conn) -> None:
        cur = await conn.execute("SELECT max(version) FROM schema_version")
        row = await cur.fetchone()
        current = int(row[0] or 0) if row else 0
        if current > LATEST:
            raise SchemaTooNewError(_too_new(current))
        for table in ("responses", "conversations"):
            await conn.execute(f"SELECT 1 FROM {table} LIMIT 1")  # noqa: S608 (fixed names)

    def _mark_broken(self, reason: str) -> None:
        if self._health.reason != reason:  # one line per new problem, not one per request
            log.error(
                "PostgreSQL store unusable: %s; stored responses and conversations answer 503 "
                "until it is back",
                reason,
            )
        self._health = StoreHealth("error", reason)

    def _mark_ok(self) -> None:
        if self._health.status == "error":
            log.warning("PostgreSQL store usable again")
        self._health = StoreHealth("ok")

    # -- running work ---------------------------------------------------------------------------

    async def read(self, fn: Work[T]) -> T:
        """Run ``fn`` outside a transaction (autocommit: one round trip per statement, each
        statement its own snapshot), retried while the server is away. Reads that must agree
        across statements are written as one statement (``responses.get``)."""
        return await self._run(fn, write=False)

    async def write(self, fn: Work[T]) -> T:
        """Run ``fn`` in one transaction; returns only once its ``COMMIT`` has returned."""
        return await self._run(fn, write=True)

    async def _run(self, fn: Work[T], *, write: bool) -> T:
        try:
            import psycopg
        except ImportError as exc:  # the ``postgres`` extra is not installed
            self._mark_broken("psycopg is not installed (pip install 'egemma[postgres]')")
            raise StoreUnavailableError(BROKEN_MESSAGE, retry_after=30) from exc

        deadline = time.monotonic() + self.busy_timeout
        delay = 0.05
        while True:
            try:
                pool = await self._ensure_open(deadline)
                result = await self._attempt(pool, fn, deadline, write)
                if self._health.status != "ok":
                    self._mark_ok()  # a committed transaction proves the server is back
                return result
            except _RetryError as retry:
                cause: Exception = retry.cause
            except SchemaTooNewError as exc:
                raise self._broken(exc) from exc
            except (psycopg.DataError, psycopg.IntegrityError, psycopg.InternalError):
                raise  # this request's data or a bug: not a broken store
            except psycopg.Error as exc:
                if not _retryable(exc):
                    raise self._broken(exc) from exc  # auth, missing database/table, disk full
                cause = exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._mark_broken(_reason(cause))
                log.warning("PostgreSQL store unusable for %.1fs; answering 503", self.busy_timeout)
                raise StoreUnavailableError(BROKEN_MESSAGE, retry_after=2) from cause
            await anyio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.5)

    async def _attempt(self, pool: Any, fn: Work[T], deadline: float, write: bool) -> T:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            conn = await pool.getconn(timeout=max(deadline - time.monotonic(), 0.01))
        except PoolTimeout as exc:
            raise _RetryError(exc) from exc
        try:
            if not write:
                return await fn(conn)
            await conn.execute("BEGIN")
            try:
                result = await fn(conn)
            except BaseException:
                await _rollback(conn)
                raise
            try:
                await conn.execute("COMMIT")
            except psycopg.Error as exc:
                if conn.closed or conn.broken:
                    # The answer to COMMIT was lost: done or not, nobody can tell. Never replay.
                    log.warning("PostgreSQL connection lost during COMMIT; answering 503")
                    raise StoreUnavailableError(
                        "The store connection was lost while committing; retry shortly.",
                        retry_after=1,
                    ) from exc
                raise
            return result
        finally:
            await pool.putconn(conn)

    def _broken(self, exc: BaseException) -> StoreUnavailableError:
        self._mark_broken(_reason(exc))
        return StoreUnavailableError(BROKEN_MESSAGE, retry_after=5)

    # -- connections and schema -----------------------------------------------------------------

    async def _ensure_open(self, deadline: float) -> Any:
        if self._closed:
            raise StoreUnavailableError("The store is closed (shutting down).")
        if self._pool is not None and self._migrated:
            return self._pool
        async with self._opening:
            if self._pool is None:
                self._pool = self._new_pool()
                await self._pool.open(wait=False)
            if not self._migrated:
                await self._migrate(deadline)
        return self._pool

    def _new_pool(self) -> Any:
        from psycopg_pool import AsyncConnectionPool

        return AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            configure=self._configure,
            kwargs={
                "connect_timeout": max(2, int(self.busy_timeout)),
                "application_name": "egemma",
                # Transactions are explicit (BEGIN … COMMIT in ``_attempt``): a read is one
                # round trip, not BEGIN + SELECT + COMMIT.
                "autocommit": True,
            },
            timeout=self.busy_timeout,
            # Give up a reconnect loop soon: the next request that waits starts a fresh one at
            # once, so a server that is back is used within a request, not after a long backoff.
            reconnect_timeout=max(2.0, min(2 * self.busy_timeout, 60.0)),
            reconnect_failed=_quiet,
            name="egemma-store",
        )

    async def _configure(self, conn: Conn) -> None:
        """Per new connection: commits are durable and waits are bounded."""
        ms = int(self.busy_timeout * 1000)
        await conn.execute(f"SET lock_timeout = {ms}")
        await conn.execute(f"SET statement_timeout = {max(ms * 6, 30_000)}")
        cur = await conn.execute("SHOW synchronous_commit")
        row = await cur.fetchone()
        if row and row[0] == "off":
            await conn.execute("SET synchronous_commit = on")

    async def _migrate(self, deadline: float) -> None:
        from psycopg_pool import PoolTimeout

        try:
            conn = await self._pool.getconn(timeout=max(deadline - time.monotonic(), 0.01))
        except PoolTimeout as exc:
            raise _RetryError(exc) from exc
        try:
            await migrate(conn)
            self._migrated = True
            log.info("PostgreSQL store ready (schema v%d)", LATEST)
        except BaseException:
            await _rollback(conn)
            raise
        finally:
            await self._pool.putconn(conn)


class PostgresScope:
    """``store.scoped(owner)``: the same pool, seen as one owner."""

    kind = "postgresql"

    def __init__(self, store: PostgresStore, owner: Owner) -> None:
        self._store = store
        self.owner = owner
        self.responses = PostgresResponses(store, owner)
        self.conversations = PostgresConversations(store, owner)
        self.background = store.background

    def scoped(self, owner: Owner) -> PostgresScope:
        return PostgresScope(self._store, owner)

    async def open(self) -> None:
        await self._store.open()

    async def close(self) -> None:
        """The store owns the pool; a view has nothing to close."""

    def health(self) -> StoreHealth:
        return self._store.health()

    async def check(self) -> None:
        await self._store.check()


class _RetryError(Exception):
    """No connection within this attempt's budget: try again (or 503 when out of budget)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def migrate(conn: Conn) -> int:
    """Apply pending migrations, one transaction each, under an advisory lock (``conn`` is in
    autocommit mode, as the pool's are)."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = await _version(conn)
        if current > LATEST:
            raise SchemaTooNewError(_too_new(current))
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            async with conn.transaction():
                for statement in migration.postgres.split(";"):
                    if statement.strip():
                        await conn.execute(statement)
                await conn.execute("DELETE FROM schema_version")
                await conn.execute(
                    "INSERT INTO schema_version (version) VALUES (%s)", (migration.version,)
                )
            current = migration.version
            log.info("store migrated to v%d (%s)", migration.version, migration.name)
        return current
    finally:
        await _rollback(conn)
        if not conn.closed:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


async def _version(conn: Conn) -> int:
    cur = await conn.execute("SELECT max(version) FROM schema_version")
    row = await cur.fetchone()
    return int(row[0] or 0) if row else 0


async def _rollback(conn: Conn) -> None:
    import psycopg
    from psycopg.pq import TransactionStatus

    if conn.closed or conn.info.transaction_status == TransactionStatus.IDLE:
        return
    try:
        await conn.execute("ROLLBACK")
    except psycopg.Error as exc:  # a dead connection: the pool discards it on return
        log.debug("rollback on a broken store connection: %s", exc)


async def _quiet(pool: Any) -> None:
    log.debug("store pool %s stopped one reconnect loop; the next request starts another", pool)


def _too_new(version: int) -> str:
    return f"store schema v{version} is newer than this eGemma (v{LATEST}); upgrade eGemma"


def _retryable(exc: BaseException) -> bool:
    import psycopg

    state = getattr(exc, "sqlstate", None) or ""
    if state.startswith(_RETRY_STATES):
        return True
    # No SQLSTATE: the client side failed (connection refused, reset, closed under us).
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and not state


def _reason(exc: BaseException) -> str:
    """Why, for the public ``/health``: the kind of failure, never the host or credentials."""
    if isinstance(exc, SchemaTooNewError):
        return str(exc)
    state = getattr(exc, "sqlstate", None)
    if state:
        diag = getattr(exc, "diag", None)
        primary = getattr(diag, "message_primary", None) or type(exc).__name__
        return f"PostgreSQL error {state}: {primary}"
    if type(exc).__name__ == "PoolTimeout":
        return "PostgreSQL unreachable (no connection could be made in time)"
    return f"PostgreSQL unreachable ({type(exc).__name__})"
