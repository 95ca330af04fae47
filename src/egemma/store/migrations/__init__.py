"""Versioned schema migrations for the SQLite store, applied in order by ``sqlite.py``.

Each migration is a module ``vNNNN_<name>.py`` with ``VERSION`` (int, consecutive from 1),
``SQL`` (SQLite statements run in one transaction) and ``POSTGRES`` (the same change in
PostgreSQL's dialect, for ``postgres.py``): one number means one logical schema on both stores.
SQLite keeps the applied version in ``PRAGMA user_version``, PostgreSQL in its ``schema_version``
table. Never edit a released migration: add the next one.
"""

from __future__ import annotations

from dataclasses import dataclass

from egemma.store.migrations import v0001_initial, v0002_owners, v0003_background


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    postgres: str


MIGRATIONS: tuple[Migration, ...] = tuple(
    Migration(module.VERSION, module.__name__.rsplit(".", 1)[-1], module.SQL, module.POSTGRES)
    for module in (v0001_initial, v0002_owners, v0003_background)
)

LATEST = MIGRATIONS[-1].version

assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1)), (
    "migrations must be consecutive"
)
