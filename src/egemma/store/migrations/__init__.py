"""Versioned schema migrations for the SQLite store, applied in order by ``sqlite.py``.

Each migration is a module ``vNNNN_<name>.py`` with ``VERSION`` (int, consecutive from 1) and
``SQL`` (statements run in one transaction). The applied version lives in ``PRAGMA user_version``.
Never edit a released migration: add the next one.
"""

from __future__ import annotations

from dataclasses import dataclass

from egemma.store.migrations import v0001_initial, v0002_owners


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = tuple(
    Migration(module.VERSION, module.__name__.rsplit(".", 1)[-1], module.SQL)
    for module in (v0001_initial, v0002_owners)
)

LATEST = MIGRATIONS[-1].version

assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1)), (
    "migrations must be consecutive"
)
