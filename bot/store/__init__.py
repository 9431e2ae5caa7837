"""Persistence behind one interface (`Store`); `open_store` picks the implementation from DATABASE_URL."""

from __future__ import annotations

from bot.store.base import Store


def open_store(database_url: str) -> Store:
    """Build (not yet open) the store for `database_url`: `sqlite:///path`, `sqlite+memory:` or
    `postgresql://user@host:port/database` (several processes may share a PostgreSQL database)."""
    from bot.store.sqlite import SqliteStore

    if database_url.startswith(("postgresql://", "postgres://")):
        from bot.store.postgres import PostgresStore

        return PostgresStore(database_url)
    if database_url.startswith("sqlite+memory:"):
        return SqliteStore(":memory:")
    if database_url.startswith("sqlite:///"):
        return SqliteStore(database_url.removeprefix("sqlite:///"))
    raise ValueError("DATABASE_URL must start with sqlite:/// or postgresql://")


__all__ = ["Store", "open_store"]
