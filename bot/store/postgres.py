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

Group commit (bot/store/group_commit.py). Holds and settlements in flight together go as one batch: one
statement for its settlements, then one for its holds, each atomic in autocommit: two round trips and
two WAL flushes for a whole burst instead of one round trip and one commit each (and no BEGIN or COMMIT
trips: they count when the database is across a network). The statements are made functions of the
session (`pg_temp`, created the first time a connection needs them: nothing shared to migrate or race
on) and called once per row of the batch in a LATERAL join over its arguments (`_call_laterally`). The
holds' first call takes every advisory lock of the batch (in the one global order, exclusive where any
of its holds checks that scope), so each guarded hold runs after the locks and after the holds before
it. A failed statement writes nothing, and its operations are applied one by one, so one bad operation
fails only its caller.

Claims take one advisory lock for the whole claim statement, so the run limits hold across processes.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from bot.store import sql
from bot.store.base import DuplicateJobError
from bot.store.common import HoldRequest, SqlStore, Tx, apply_migrations, job_from_row
from bot.store.group_commit import GroupCommit, Op
from bot.store.records import JobRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

QUERIES = sql.Queries(sql.POSTGRES)
MIGRATION_LOCK = "migrations"
HOLD_ATTEMPTS = 3  # a refused hold whose figures show room (a release landed meanwhile) is tried again
READS_IN_FLIGHT = 2  # batched reads running at once (they take no locks: more would only add connections)
GUILD_BUCKET_SLOTS = 16  # migration 0002's guild_buckets.slot = user_id % 16


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
    """`CREATE OR REPLACE FUNCTION pg_temp.<name>`: a hold in one call, from the shared statements (numbered).

    Its parameters: the lock keys and their modes, the hold statement's, then the figures statement's.
    It takes the locks in the order given (a batch passes none: it has taken them all before), runs the
    guarded hold, and on a refusal reads the figures. VOLATILE (the default): under READ COMMITTED each
    statement in it takes a fresh snapshot, so the hold, run after the locks, sees every hold committed
    before them and every hold of its own batch before it. Static SQL: each session plans it once and
    keeps the plan, as a prepared statement would.
    """
    params = ", ".join(["BIGINT[]", "BOOLEAN[]", *hold_types, *figure_types])
    figures_text = _shifted(figures, LOCK_PARAMS + len(hold_types))
    return f"""
CREATE OR REPLACE FUNCTION pg_temp.{name}({params}, OUT held BOOLEAN, OUT figures JSON) LANGUAGE plpgsql AS $hold$
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


@dataclass(frozen=True)
class _Function:
    """A statement made a function of this session (`pg_temp`), so that a batch calls it once per row."""

    name: str
    create: str  # CREATE OR REPLACE FUNCTION pg_temp.<name>(…)
    types: tuple[str, ...]  # its parameter types, in order (the statements' own, as PostgreSQL inferred them)
    names: tuple[tuple[str, ...], ...]  # the named parameters of each statement it is made of, in `$n` order
    fixed: tuple[str, ...] = ()  # the types of its leading parameters, given to the first call only
    order: str = ""  # a sort key over its arguments (`u.a1` …) to call it in over a batch (`_call_laterally`)

    def arguments_of(self, *values: Mapping[str, Any]) -> list[Any]:
        """Its arguments, from each statement's named values."""
        return [params[name] for params, names in zip(values, self.names, strict=True) for name in names]


@dataclass(frozen=True)
class _HoldCall:
    """A hold waiting in the batch: its request (for the locks), its function and arguments."""

    request: HoldRequest
    function: _Function
    arguments: list[Any]


async def _parameter_types(conn: asyncpg.Connection, text: str) -> list[str]:
    """The types PostgreSQL infers for a numbered statement's parameters (one Parse on `conn`)."""
    return [f"{t.schema}.{t.name}" for t in (await conn.prepare(text)).get_parameters()]


def _numbered_rows(types: Sequence[str], alias: str) -> str:
    """`unnest(...) WITH ORDINALITY AS alias(a1, …, batch_row)`: a batch's arguments, one array per
    parameter (`$1` …), zipped back into numbered rows."""
    arrays = ", ".join(f"${n}::{kind}[]" for n, kind in enumerate(types, start=1))
    columns = ", ".join(f"a{n}" for n in range(1, len(types) + 1))
    return f"unnest({arrays}) WITH ORDINALITY AS {alias}({columns}, batch_row)"


def _columns(rows: Sequence[Sequence[Any]], count: int) -> list[list[Any]]:
    """Rows of arguments as one list per parameter (what `_numbered_rows` unnests)."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(count)]


async def _call_laterally(
    conn: asyncpg.Connection,
    function: _Function,
    rows: Sequence[Sequence[Any]],
    *,
    first: Sequence[Any] = (),
) -> dict[int, Any]:
    """Call `function` once per row of arguments, in order, in one statement; its result rows by the
    row's number (1-based; a row whose call returned nothing is missing).

    The arguments go as one array per parameter, zipped back into rows by `unnest … WITH ORDINALITY`;
    the function is called for each in a LATERAL join. It is VOLATILE, so each statement in it takes a
    fresh snapshot and sees what the calls before it in this transaction wrote: each guarded hold is
    checked after the holds before it, as if they ran one after the other. The function's `order`, a
    sort key over the arguments `u.a1` …, calls them in that order instead of the rows' (the sorted
    subquery is fenced with OFFSET 0, so the lateral join calls the function row by row in its order).
    `first`: the values of the function's leading parameters (its `fixed` ones) for the first call; the
    other calls get them empty (a hold function: the batch's locks, taken once, before the first hold).
    """
    count = len(function.types)
    leading = [
        f"CASE WHEN o.batch_row = 1 THEN ${count + n}::{kind} ELSE '{{}}'::{kind} END"
        for n, kind in enumerate(function.fixed, start=1)
    ]
    arguments = ", ".join(leading + [f"o.a{n}" for n in range(1, count + 1)])
    rows_in_order = _numbered_rows(function.types, "o")
    if function.order:
        rows_in_order = (
            f"(SELECT * FROM {_numbered_rows(function.types, 'u')} ORDER BY {function.order}, batch_row OFFSET 0) AS o"
        )
    statement = (
        f"SELECT o.batch_row, f.* FROM {rows_in_order}"
        f" CROSS JOIN LATERAL pg_temp.{function.name}({arguments}) AS f ORDER BY o.batch_row"
    )
    leading_values = list(first) if first else [[] for _ in function.fixed]
    return {row["batch_row"]: row for row in await conn.fetch(statement, *_columns(rows, count), *leading_values)}


async def _first_use(conn: asyncpg.Connection, function: _Function, call: Callable[[], Awaitable[T]]) -> T:
    """`call()` of `function`, made again after creating the function in this session when it had not
    got it (the statement then failed before it ran: nothing was written)."""
    try:
        return await call()
    except (asyncpg.UndefinedFunctionError, asyncpg.InvalidSchemaNameError):
        await conn.execute(function.create)
    return await call()


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


def _alone_error(op: Op, exc: Exception) -> Exception:
    """A hold applied alone that hit the jobs' primary key is a duplicate job id."""
    if op.kind == "hold" and isinstance(exc, asyncpg.UniqueViolationError):
        return DuplicateJobError(f"job {op.values['id']} already exists")
    return exc


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
        self._functions: dict[str, _Function] = {}  # statement -> the session function made of it
        self._group = GroupCommit(self._apply, alone_error=_alone_error)
        # The read every hold makes first (the member's allowances and the server's policy), batched like
        # the writes: one round trip for a burst of them. Only statements whose rows are read by name (the
        # batch adds a column) and whose parameters may become columns (no LIMIT $n) belong here.
        self._batched_reads = frozenset({QUERIES.allowance_context})
        self._reads = GroupCommit(self._apply_reads, max_in_flight=READS_IN_FLIGHT)
        self._read_types: dict[str, tuple[str, ...]] = {}

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
        await self._group.drain()  # submitted holds and settlements are applied, not dropped
        await self._reads.drain()
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
        if statement in self._batched_reads:
            rows: list[Any] = await self._reads.submit(Op(kind="single", values=dict(params), statement=statement))
            return rows
        text, args = _bind(statement, params)
        return list(await self._conn_pool.fetch(text, *args))

    async def _apply_reads(self, batch: list[Op]) -> list[Any]:
        """Reads of one statement in flight together, as one statement: the statement as a LATERAL
        subquery over the rows of its arguments (`unnest … WITH ORDINALITY`). Each op's rows, in order;
        all of them read one snapshot, as reads running at the same moment could have."""
        by_statement: dict[str, list[Op]] = {}
        for op in batch:
            by_statement.setdefault(op.statement, []).append(op)
        outcome: dict[int, list[Any]] = {}
        async with self._conn_pool.acquire() as conn:
            for statement, ops in by_statement.items():
                text, names = sql.to_numbered(statement)
                types = self._read_types.get(text)
                if types is None:
                    types = self._read_types[text] = tuple(await _parameter_types(conn, text))
                per_row = _NUMBERED.sub(lambda m: f"o.a{m.group(1)}", text)
                found = await conn.fetch(
                    f"SELECT o.batch_row, r.* FROM {_numbered_rows(types, 'o')}"
                    f" CROSS JOIN LATERAL ({per_row}) AS r ORDER BY o.batch_row",
                    *_columns([[op.values[name] for name in names] for op in ops], len(types)),
                )
                for op in ops:
                    outcome[id(op)] = []
                for row in found:
                    outcome[id(ops[row["batch_row"] - 1])].append(row)
        return [outcome[id(op)] for op in batch]

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

    # --- group commit of holds and settlements (bot/store/group_commit.py) -------------------------------

    async def _hold(self, request: HoldRequest) -> JobRecord:
        """The guarded hold and its job row (one statement: the job row only where the hold went in),
        committed with the holds and settlements queued beside it (`_apply`). If a release committed
        between the refused hold and its figures (releases take no lock), the figures show room, and the
        hold is tried again."""
        function = await self._hold_function(request)
        call = _HoldCall(request, function, function.arguments_of(request.values, request.figure_values))
        for _ in range(HOLD_ATTEMPTS):
            held, figures = await self._group.submit(Op(kind="hold", values=request.values, request=call))
            if held:
                return request.record()
            refusal = request.refusal(figures)
            if not isinstance(refusal, RuntimeError):  # a limit explains it (else: room appeared, retry)
                raise refusal
        raise refusal

    async def _finish(self, values: dict[str, Any]) -> JobRecord | None:
        row = await self._group.submit(Op(kind="finish", values=values))
        return None if row is None else job_from_row(row)

    async def _apply(self, batch: list[Op]) -> list[Any]:
        """Apply `batch` on one connection; each op's outcome, in order: a settlement's job row (None when
        it was already settled), a hold's (held, figures). Raises when a statement of it failed.

        One statement for the settlements (they only free credits, so they go first), then one for the
        holds of each kind (in practice one): each a single call of its function per row, atomic in
        autocommit, one round trip and one WAL flush. The holds' first call takes every lock the holds
        of its statement need, in the one global order (`HoldRequest.batch_lock_keys`), before its own
        hold; the locks last to the statement's commit, and each guarded hold is checked after the
        holds before it (see `_call_laterally`). A connection meets the functions the first time in such
        a statement, which then fails before it runs: they are created and the statement sent again."""
        finishes = [op for op in batch if op.kind == "finish"]
        holds = [op for op in batch if op.kind == "hold"]
        outcome: dict[int, Any] = {}
        async with self._conn_pool.acquire() as conn:
            if finishes:
                finish = await self._finish_function()
                arguments = [finish.arguments_of(op.values) for op in finishes]
                call = functools.partial(_call_laterally, conn, finish, arguments)
                rows = await _first_use(conn, finish, call)
                for n, op in enumerate(finishes, start=1):
                    outcome[id(op)] = rows.get(n)
            by_function: dict[str, list[Op]] = {}
            for op in holds:
                by_function.setdefault(op.request.function.name, []).append(op)
            for group in by_function.values():
                function = group[0].request.function
                keys = HoldRequest.batch_lock_keys([op.request.request for op in group])
                locks = ([lock_key(name) for name, _ in keys], [exclusive for _, exclusive in keys])
                arguments = [op.request.arguments for op in group]
                call = functools.partial(_call_laterally, conn, function, arguments, first=locks)
                rows = await _first_use(conn, function, call)
                for n, op in enumerate(group, start=1):
                    figures = rows[n]["figures"]
                    outcome[id(op)] = (rows[n]["held"], None if figures is None else json.loads(figures))
        return [outcome[id(op)] for op in batch]

    async def _hold_function(self, request: HoldRequest) -> _Function:
        """The hold function for this request's statements (`hold_function`); the parameter types are
        asked of PostgreSQL once per statement (a Parse on one connection), then remembered."""
        statement = f"WITH held AS ({request.sql} RETURNING job_id) {sql.JOB_ROW} FROM held RETURNING id"
        known = self._functions.get(statement)
        if known is None:
            hold_text, hold_names = sql.to_numbered(statement)
            figures_text, figure_names = sql.to_numbered(self.queries.limit_figures)
            async with self._conn_pool.acquire() as conn:
                hold_types = await _parameter_types(conn, hold_text)
                figure_types = await _parameter_types(conn, figures_text)
            name = "hold_" + hashlib.blake2b((hold_text + figures_text).encode(), digest_size=10).hexdigest()
            known = _Function(
                name=name,
                create=hold_function(name, hold_text, hold_types, figures_text, figure_types),
                types=tuple(hold_types + figure_types),
                names=(hold_names, figure_names),
                fixed=("BIGINT[]", "BOOLEAN[]"),  # the lock keys and modes: the first call takes the batch's
            )
            self._functions[statement] = known
        return known

    async def _finish_function(self) -> _Function:
        """FINISH_JOB as a SQL function returning the settled job's row (none when already settled)."""
        known = self._functions.get(sql.FINISH_JOB)
        if known is None:
            text, names = sql.to_numbered(sql.FINISH_JOB)
            async with self._conn_pool.acquire() as conn:
                types = await _parameter_types(conn, text)
            name = "finish_" + hashlib.blake2b(text.encode(), digest_size=10).hexdigest()
            create = (
                f"CREATE OR REPLACE FUNCTION pg_temp.{name}({', '.join(types)}) RETURNS SETOF jobs"
                f" LANGUAGE sql AS $finish$ {text} $finish$"
            )
            # Settling captures into the server's running totals, whose rows (16 slots a bucket, by member:
            # migration 0002) and the member's are locked to COMMIT. Two batches settling the same members in
            # different orders would wait for each other in a circle (PostgreSQL breaks it after
            # deadlock_timeout, and the batch is split): so every batch settles in one order, by server,
            # slot, then member. The two orders still cross only for one member settling in two batches at
            # once, which the split resolves.
            job_of = (
                f"(SELECT ARRAY[guild_id, user_id % {GUILD_BUCKET_SLOTS}, user_id] FROM jobs"
                f" WHERE id = u.a{names.index('id') + 1})"
            )
            known = _Function(name=name, create=create, types=tuple(types), names=(names,), order=job_of)
            self._functions[sql.FINISH_JOB] = known
        return known
