"""Persistence behind one interface (`Store`); `open_store` picks the implementation from DATABASE_URL."""

from __future__ import annotations

from bot.store.base import Store


def open_store(database_url: str) -> Store:
    """Build (not yet open) the store for `database_url`: `sqlite:///path` or `sqlite+memory:`."""
    from bot.store.sqlite import SqliteStore

    if database_url.startswith("sqlite+memory:"):
        return SqliteStore(":memory:")
    if database_url.startswith("sqlite:///"):
        return SqliteStore(database_url.removeprefix("sqlite:///"))
    raise ValueError("DATABASE_URL must start with sqlite:/// (postgresql:// is not supported yet)")


__all__ = ["Store", "open_store"]
