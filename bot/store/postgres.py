"""The PostgreSQL store, for several bot processes sharing one database; reached through asyncpg.

Only what is PostgreSQL's own lives here: the pool, `:name` -> `$n` binding, migrations under an
advisory lock, and how a hold is committed. Every Store method and query is shared with SQLite
(bot/store/common.py, bot/store/sql.py).

Holds across processes. Under READ COMMITTED a guarded `INSERT … SELECT` alone is not enough: two
transactions can both read the sums before either commits. So a hold's transaction first takes
transaction-scoped advisory locks, the whole bot's, the server's, then the member's (one order
everywhere: no deadlock), exclusive on each scope whose limit the hold checks (the operator's bot-wide
caps; budget, server cap and server queue; allowance and member queue) and shared on the others, and
only then runs the guarded insert: its statement snapshot is taken after the locks, so it sees every
hold committed before it. Settlements
need no lock: a capture or release never raises what counts against a limit.

Claims take one advisory lock for the whole claim statement, so the run limits hold across processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg

from bot.store import sql
from bot.store.base import DuplicateJobError
from bot.store.common import HoldRequest, SqlStore, Tx, apply_migrations, job_from_row
from bot.store.records import JobRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

QUERIES = sql.Queries(sql.POSTGRES)
MIGRATION_LOCK = "migrations"
HOLD_ATTEMPTS = 3  # a refused hold whose figures show room (a release landed meanwhile) is tried again


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for `name` (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def _bind(statement: str, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
    text, names = sql.to_numbered(statement)
    return text, [params[name] for name in names]


class _PgTx:
    """`Tx` on one pooled connection. BEGIN goes out with the first statement: with the locks, when the
    transaction starts with them, so a hold's BEGIN and its locks are one round trip."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.begun = False

    async def fetch(self, statement: str, params: Mapping[str, Any]) -> list[Any]:
        if not self.begun:
            await self.conn.execute("BEGIN")
            self.begun = True
        text, args = _bind(statement, params)
        return list(await self.conn.fetch(text, *args))

    async def lock(self, keys: Sequence[tuple[str, bool]]) -> None:
        # The keys are integers made here, never text from outside: safe to write into the statement, which
        # lets BEGIN and the locks share one simple-protocol round trip.
        calls = ", ".join(
            f"pg_advisory_xact_lock{'' if exclusive else '_shared'}({lock_key(name)})" for name, exclusive in keys
        )
        await self.conn.execute(f"{'' if self.begun else 'BEGIN; '}SELECT {calls}")
        self.begun = True


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset between uses, which is a round trip per use by default (unlock all, RESET ALL,
    UNLISTEN): the store leaves nothing to reset. Its locks are transaction-scoped, every transaction
    ends in COMMIT or ROLLBACK before release, and it never SETs, LISTENs or opens cursors."""


def _consume_exception(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("transaction of a cancelled caller failed: %r", task.exception())


class PostgresStore(SqlStore):
    """`Store` on a PostgreSQL database (`postgresql://…`), safe for many processes at once."""

    queries = QUERIES

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        min_size: int = 2,
        max_size: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dsn = dsn
        self._schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._clock = clock
        self._pool: asyncpg.Pool | None = None

    @property
    def dsn(self) -> str:
        return self._dsn

    # --- lifetime ----------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        settings = {"search_path": self._schema} if self._schema else {}
        pool = await asyncpg.create_pool(
            self._dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            server_settings=settings,
            reset=_keep_session,
        )
        try:
            await self._migrate(pool)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        await pool.close()  # waits for connections in use: transactions in progress finish first

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        """Apply every migration newer than the recorded version, all in one transaction.

        The advisory lock makes two processes starting at once take turns: the second finds the work done.
        """
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(MIGRATION_LOCK))

            async def run_script(script: str) -> None:
                await conn.execute(script)  # several statements (and $$ bodies): the simple protocol

            await apply_migrations(_PgTx(conn), "postgres", run_script, now=self._clock())

    @property
    def _conn_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        return self._pool

    # --- dialect primitives ------------------------------------------------------------------------------

    async def _read(self, statement: str, params: Mapping[str, Any]) -> list[Any]:
        text, args = _bind(statement, params)
        return list(await self._conn_pool.fetch(text, *args))

    async def _single(self, statement: str, params: Mapping[str, Any]) -> list[Any]:
        text, args = _bind(statement, params)
        task = asyncio.ensure_future(self._conn_pool.fetch(text, *args))
        task.add_done_callback(_consume_exception)
        return list(await asyncio.shield(task))  # a cancelled caller does not cut the statement

    async def _write(self, body: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `body` in one transaction on one connection; shielded, so it runs to COMMIT or ROLLBACK."""
        task = asyncio.ensure_future(self._transaction(body))
        task.add_done_callback(_consume_exception)
        return await asyncio.shield(task)

    async def _transaction(self, body: Callable[[Tx], Awaitable[T]]) -> T:
        async with self._conn_pool.acquire() as conn:
            tx = _PgTx(conn)
            try:
                result = await body(tx)
            except BaseException:
                if tx.begun and not conn.is_closed():
                    await conn.execute("ROLLBACK")
                raise
            if tx.begun:
                await conn.execute("COMMIT")
            return result

    async def _hold(self, request: HoldRequest) -> JobRecord:
        try:
            return await self._write(lambda tx: self._hold_in(tx, request))
        except asyncpg.UniqueViolationError as exc:
            raise DuplicateJobError(f"job {request.values['id']} already exists") from exc

    async def _hold_in(self, tx: Tx, request: HoldRequest) -> JobRecord:
        """Locks, then the guarded hold and its job row in one statement (the job row only where the hold
        went in). A refusal reads its figures in the next statement, under the same locks; if a release
        committed in between (releases take no lock) the figures show room, and the hold is tried again."""
        await tx.lock(request.lock_keys)
        statement = f"WITH held AS ({request.sql} RETURNING job_id) {sql.JOB_ROW} FROM held RETURNING id"
        for _ in range(HOLD_ATTEMPTS):
            if await tx.fetch(statement, request.values):
                return request.record()
            figures = await tx.fetch(self.queries.limit_figures, request.figure_values)
            refusal = request.refusal(figures[0] if figures else None)
            if not isinstance(refusal, RuntimeError):  # a limit explains it (else: room appeared, retry)
                raise refusal
        raise refusal

    async def _finish(self, values: dict[str, Any]) -> JobRecord | None:
        rows = await self._single(sql.FINISH_JOB, values)
        return job_from_row(rows[0]) if rows else None
