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
hold committed before it. Settlements need no lock: a capture or release never raises what counts
against a limit.

Round trips. A hold is one: a call of a plpgsql function made from the shared statements (see
`hold_function`) that takes the locks, runs the guarded hold and, on a refusal, reads its figures, all in
the implicit transaction of one statement, which commits before the locks are released. Each
connection creates the function for a set of guards the first time it needs it, in its own session
(`pg_temp`: nothing shared to migrate or race on), and plans its statements once. A settlement is one
statement. asyncpg's statement cache keeps both calls prepared on each connection.

Claims take one advisory lock for the whole claim statement, so the run limits hold across processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
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


_NUMBERED = re.compile(r"\$(\d+)")
LOCK_PARAMS = 2  # a hold function's first parameters: the lock keys, and which are exclusive


def _shifted(text: str, by: int) -> str:
    """A numbered statement with every `$n` renumbered `$(n + by)`."""
    return _NUMBERED.sub(lambda m: f"${int(m.group(1)) + by}", text)


def hold_function(name: str, hold: str, hold_types: Sequence[str], figures: str, figure_types: Sequence[str]) -> str:
    """`CREATE FUNCTION pg_temp.<name>`: a hold in one call, from the shared statements (numbered).

    Its parameters: the lock keys and their modes, the hold statement's, then the figures statement's.
    It takes the locks in the order given, runs the guarded hold, and on a refusal reads the figures.
    VOLATILE (the default): under READ COMMITTED each statement in it takes a fresh snapshot, so the hold,
    run after the locks, sees every hold committed before them. Called as one statement in autocommit,
    its implicit transaction commits before the locks are released. Static SQL: each session plans it
    once and keeps the plan, as a prepared statement would.
    """
    params = ", ".join(["BIGINT[]", "BOOLEAN[]", *hold_types, *figure_types])
    figures_text = _shifted(figures, LOCK_PARAMS + len(hold_types))
    return f"""
CREATE FUNCTION pg_temp.{name}({params}, OUT held BOOLEAN, OUT figures JSON) LANGUAGE plpgsql AS $hold$
DECLARE
    inserted TEXT;
BEGIN
    FOR i IN 1 .. coalesce(array_length($1, 1), 0) LOOP
        IF $2[i] THEN
            PERFORM pg_advisory_xact_lock($1[i]);
        ELSE
            PERFORM pg_advisory_xact_lock_shared($1[i]);
        END IF;
    END LOOP;
    {_shifted(hold, LOCK_PARAMS)} INTO inserted;
    held := inserted IS NOT NULL;
    IF NOT held THEN
        SELECT row_to_json(f) INTO figures FROM ({figures_text}) AS f;
    END IF;
END $hold$
"""


class _PgTx:
    """`Tx` on one pooled connection. BEGIN goes out with the first statement: with the locks, when the
    transaction starts with them, so BEGIN and the locks are one round trip."""

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
        self._hold_functions: dict[str, tuple[str, str]] = {}  # hold statement -> (function name, CREATE)

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
        """The locks, the guarded hold and its job row (one statement: the job row only where the hold went
        in) and, when refused, the figures: one call of a hold function (`hold_function`), one round
        trip. If a release committed between the refused insert and the figures (releases take no lock),
        the figures show room, and the hold is tried again."""
        statement = f"WITH held AS ({request.sql} RETURNING job_id) {sql.JOB_ROW} FROM held RETURNING id"
        hold_text, hold_args = _bind(statement, request.values)
        figures_text, figure_args = _bind(self.queries.limit_figures, request.figure_values)
        name, create = await self._hold_function(hold_text, figures_text)
        args = [
            [lock_key(key) for key, _ in request.lock_keys],
            [exclusive for _, exclusive in request.lock_keys],
            *hold_args,
            *figure_args,
        ]
        marks = ", ".join(f"${n}" for n in range(1, len(args) + 1))
        call = f"SELECT held, figures FROM pg_temp.{name}({marks})"
        for _ in range(HOLD_ATTEMPTS):
            try:
                row = await self._call_hold(call, create, args)
            except asyncpg.UniqueViolationError as exc:
                raise DuplicateJobError(f"job {request.values['id']} already exists") from exc
            if row["held"]:
                return request.record()
            figures = row["figures"]
            refusal = request.refusal(None if figures is None else json.loads(figures))
            if not isinstance(refusal, RuntimeError):  # a limit explains it (else: room appeared, retry)
                raise refusal
        raise refusal

    async def _hold_function(self, hold_text: str, figures_text: str) -> tuple[str, str]:
        """The name and CREATE statement of the hold function for these statements; the parameter types are
        asked of PostgreSQL once per statement (a Parse on one connection), then remembered."""
        known = self._hold_functions.get(hold_text)
        if known is None:
            async with self._conn_pool.acquire() as conn:
                hold_types = [f"{t.schema}.{t.name}" for t in (await conn.prepare(hold_text)).get_parameters()]
                figure_types = [f"{t.schema}.{t.name}" for t in (await conn.prepare(figures_text)).get_parameters()]
            name = "hold_" + hashlib.blake2b((hold_text + figures_text).encode(), digest_size=10).hexdigest()
            known = name, hold_function(name, hold_text, hold_types, figures_text, figure_types)
            self._hold_functions[hold_text] = known
        return known

    async def _call_hold(self, call: str, create: str, args: Sequence[Any]) -> Any:
        """Call a hold function, creating it first on a connection (its session) that does not have it yet.
        Shielded like `_single`: once sent, the hold commits or fails whole."""

        async def run() -> Any:
            async with self._conn_pool.acquire() as conn:
                try:
                    return await conn.fetchrow(call, *args)
                except (asyncpg.UndefinedFunctionError, asyncpg.InvalidSchemaNameError):  # no pg_temp yet
                    # The call failed before it ran: nothing was written. Create, then call again.
                    await conn.execute(create)
                    return await conn.fetchrow(call, *args)

        task = asyncio.ensure_future(run())
        task.add_done_callback(_consume_exception)
        return await asyncio.shield(task)

    async def _finish(self, values: dict[str, Any]) -> JobRecord | None:
        rows = await self._single(sql.FINISH_JOB, values)
        return job_from_row(rows[0]) if rows else None
