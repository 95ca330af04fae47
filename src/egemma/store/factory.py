"""The store the app uses: PostgreSQL when ``STORE_URL`` is set, else SQLite in DATA_DIR."""

from __future__ import annotations

from egemma.settings import Settings
from egemma.store.base import Store
from egemma.store.sqlite import store_from_settings as sqlite_from_settings


def store_from_settings(settings: Settings) -> Store:
    url = settings.store.url
    if url is not None:
        from egemma.store.postgres import PostgresStore

        return PostgresStore(
            url.get_secret_value(),
            busy_timeout=settings.store.busy_timeout,
            pool_size=settings.store.pool_size,
        )
    return sqlite_from_settings(settings)


def store_kind(settings: Settings) -> str:
    """``postgresql`` or ``sqlite``: what /health names."""
    return "postgresql" if settings.store.url is not None else "sqlite"
