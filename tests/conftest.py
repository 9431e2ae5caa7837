"""The store fixtures: every store-backed test runs against SQLite (file and memory) and PostgreSQL.

PostgreSQL is the local server (TEST_POSTGRES_DSN, default postgresql://postgres@127.0.0.1:5432/test).
Each PostgreSQL test gets its own schema, dropped afterwards. Without a reachable server the PostgreSQL
cases are skipped with the reason shown; with REQUIRE_POSTGRES=1 (CI) they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bot.store.base import Store
from bot.store.postgres import PostgresStore
from bot.store.sqlite import SqliteStore

PG_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
STORE_KINDS = ["sqlite-file", "sqlite-memory", "postgres"]
SHARED_KINDS = ["sqlite-file", "postgres"]  # an in-memory database cannot be shared

_pg_problem: list[str] = []  # the reason PostgreSQL is unusable, found once per run


async def _probe() -> str | None:
    import asyncpg

    try:
        conn = await asyncio.wait_for(asyncpg.connect(PG_DSN), timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL at {PG_DSN} unreachable ({type(exc).__name__}: {exc})"
    await conn.close()
    return None


async def require_postgres() -> None:
    """Skip (or with REQUIRE_POSTGRES=1, fail) the current test when PostgreSQL cannot be reached."""
    if not _pg_problem:
        _pg_problem.append(await _probe() or "")
    if _pg_problem[0]:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but {_pg_problem[0]}")
        pytest.skip(_pg_problem[0])


async def pg_admin(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A fresh schema in the test database, dropped (with everything in it) after the test."""
    await require_postgres()
    name = f"t_{uuid.uuid4().hex[:16]}"
    await pg_admin(f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        await pg_admin(f"DROP SCHEMA {name} CASCADE")


StoreMaker = Callable[[], Store]


@asynccontextmanager
async def _makers(kind: str, tmp_path: Path) -> AsyncIterator[StoreMaker]:
    """Builds (unopened) stores that share one database: one more process's view each time it is called.

    For SQLite, stores on one file ("sqlite-memory": a new private database each call).
    For PostgreSQL, stores with their own connection pools on one fresh schema, dropped after.
    """
    if kind == "postgres":
        await require_postgres()
        name = f"t_{uuid.uuid4().hex[:16]}"
        await pg_admin(f"CREATE SCHEMA {name}")
        try:
            yield lambda: PostgresStore(PG_DSN, schema=name, min_size=1, max_size=8)
        finally:
            await pg_admin(f"DROP SCHEMA {name} CASCADE")
    elif kind == "sqlite-file":
        path = str(tmp_path / "nested" / "bot.db")
        yield lambda: SqliteStore(path)
    else:
        yield lambda: SqliteStore(":memory:")


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The store under test, open; parametrized over SQLite (file, memory) and PostgreSQL."""
    async with _makers(request.param, tmp_path) as make, make() as s:
        yield s


@pytest.fixture(params=SHARED_KINDS)
async def shared_stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Two open stores on one database, as two processes would have (a SQLite file; PostgreSQL, two pools)."""
    async with _makers(request.param, tmp_path) as make, make() as first, make() as second:
        yield first, second
