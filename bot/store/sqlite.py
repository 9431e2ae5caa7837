"""The SQLite store: the embedded default, one file in WAL mode, reached through aiosqlite.

Only what is SQLite's own lives here (connections, the write lock, group commit, splitting migrations);
every Store method and every query is shared with PostgreSQL in bot/store/common.py and bot/store/sql.py.

Concurrency. aiosqlite runs every statement of a connection on one worker thread, in the order it was
queued. Many asyncio tasks share the write connection, so every transaction holds `self._lock` from its
`BEGIN IMMEDIATE` to its COMMIT or ROLLBACK: statements of two tasks never interleave inside one
transaction. `BEGIN IMMEDIATE` takes SQLite's write lock up front, so several processes on the same file
serialize too (waiting up to the busy timeout for each other). A single-statement write runs in
autocommit, which is atomic and takes the write lock the same way.

Money in SQL. A hold is one guarded statement, `INSERT INTO holds ... SELECT ... WHERE <available from the
sums> >= amount`: the check and the write are one step inside the transaction, never a read in Python
followed by a write. Triggers (see the migrations) write the ledger lines from the hold row and settle the
hold when its job becomes terminal, so a hold and its ledger lines can never disagree.

Group commit. Each aiosqlite call is a hop to its thread and back, and under the lock those hops, not the
SQL, are the limit (measured: ~0.1 ms a hop when many tasks are busy, against ~0.2 ms of SQL per hold and
capture). So holds and settlements that arrive while a transaction is running are queued, and the next
transaction applies the whole queue with `executemany` of the same guarded statements: SQLite evaluates
each row's guard after the rows before it, so the outcome is the one the operations would have had one
after the other, in that order. If a batch fails, it is rolled back and each operation is retried alone,
so one bad operation (say a duplicate job id) fails only its own caller. Single-statement writes
(`_single`: a job's status steps, attached replies, lease renewals, cancel flags) ride the same queue,
each statement run as it would alone, in arrival order: one lock hand-off and one COMMIT for a whole
burst of them instead of one each, so a batched claim no longer waits behind a thousand of them (the
operations of one batch were all in flight together, so any order among them is one their callers could
have seen). An operation, once submitted, runs to the end even if its caller is cancelled.

A file database gets a second, read-only connection for plain reads (balances, listings, policy): it reads
committed data only, never the half of a transaction in progress on the write connection, and it runs in
parallel with the writer. An in-memory database has one connection, so its reads take the lock too.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from bot.store import sql
from bot.store.base import DuplicateJobError
from bot.store.common import (
    DURATIONS_KEPT_PER_MODEL,
    HoldRequest,
    SqlStore,
    Tx,
    apply_migrations,
    job_from_row,
    load_migrations,
)
from bot.store.group_commit import GroupCommit, NotStarted, Op
from bot.store.records import JobRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_SECONDS = 10.0
QUERIES = sql.Queries(sql.SQLITE)

__all__ = ["DURATIONS_KEPT_PER_MODEL", "SqliteStore", "_load_migrations", "_split_statements"]


def _load_migrations() -> list[tuple[int, str, str]]:
    """SQLite's migrations, in order."""
    return load_migrations("sqlite")


def _split_statements(script: str) -> list[str]:
    """Cut a migration into single statements (trigger bodies included), dropping comment-only tails."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    rest = "\n".join(ln for ln in buffer.splitlines() if not ln.strip().startswith("--")).strip()
    if rest:
        raise ValueError(f"unterminated statement in migration: {rest[:80]!r}")
    return statements


def _consume_exception(task: asyncio.Task[Any]) -> None:
    # A shielded transaction whose caller was cancelled still reports its error here, not as "never
    # retrieved" noise.
    if not task.cancelled() and task.exception() is not None:
        log.debug("transaction of a cancelled caller failed: %r", task.exception())


def _alone_error(op: Op, exc: Exception) -> Exception:
    """A hold applied alone that hit the jobs' primary key is a duplicate job id."""
    if op.kind == "hold" and isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc):
        return DuplicateJobError(f"job {op.values['id']} already exists")
    return exc


class _SqliteTx:
    """`Tx` on the write connection, inside a transaction the caller holds the lock for."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def fetch(self, statement: str, params: Mapping[str, Any]) -> list[Any]:
        return list(await self._db.execute_fetchall(statement, params))

    async def lock(self, keys: Sequence[tuple[str, bool]]) -> None:
        """Nothing to take: BEGIN IMMEDIATE already holds the database's only write lock."""


class SqliteStore(SqlStore):
    """`Store` on one SQLite file (or `":memory:"`)."""

    queries = QUERIES

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._group = GroupCommit(self._apply, alone_error=_alone_error, gate=lambda: self._lock)

    @property
    def path(self) -> str:
        return self._path

    @property
    def _in_memory(self) -> bool:
        return self._path == ":memory:" or self._path.startswith("file::memory:")

    # --- lifetime ----------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._db is not None:
            return
        if not self._in_memory:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._db = await self._connect(read_only=False)
        try:
            await self._migrate()
            if not self._in_memory:
                self._reader = await self._connect(read_only=True)
        except BaseException:
            await self._db.close()
            self._db = None
            raise

    async def close(self) -> None:
        if self._db is None:
            return
        await self._group.drain()  # submitted holds and settlements are applied, not dropped
        async with self._lock:  # waits for the transaction in progress, if any
            if self._reader is not None:
                await self._reader.close()
                self._reader = None
            if self._db.in_transaction:
                await self._db.rollback()
            await self._db.close()
            self._db = None

    async def _connect(self, *, read_only: bool) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self._path, isolation_level=None, timeout=BUSY_TIMEOUT_SECONDS)
        db.row_factory = sqlite3.Row
        try:
            if not self._in_memory:
                await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            if read_only:
                await db.execute("PRAGMA query_only = ON")
        except BaseException:
            await db.close()
            raise
        return db

    async def _migrate(self) -> None:
        """Apply every migration newer than the recorded version, all in one transaction."""
        db = self._conn

        async def run_script(script: str) -> None:
            for statement in _split_statements(script):
                await db.execute(statement)

        async with self._lock:
            await db.execute("BEGIN IMMEDIATE")  # two processes opening at once: one migrates, one waits
            try:
                await apply_migrations(_SqliteTx(db), "sqlite", run_script, now=self._clock())
                await db.commit()
            except BaseException:
                await db.rollback()
                raise

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    # --- transaction plumbing ----------------------------------------------------------------------------

    async def _write(self, body: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `body` as one transaction, alone on the write connection, to the end.

        COMMIT when `body` returns, ROLLBACK when it raises. Shielded: a caller cancelled half-way does
        not cut the transaction (nor leave it open for the next task to commit).
        """
        task = asyncio.ensure_future(self._locked(body))
        task.add_done_callback(_consume_exception)
        return await asyncio.shield(task)

    async def _locked(self, body: Callable[[Tx], Awaitable[T]]) -> T:
        async with self._lock:
            db = self._conn
            await db.execute("BEGIN IMMEDIATE")
            try:
                result = await body(_SqliteTx(db))
                await db.commit()
                return result
            except BaseException:
                if db.in_transaction:
                    await db.rollback()
                raise

    async def _single(self, statement: str, params: Mapping[str, Any]) -> list[Any]:
        """One write statement, atomic on its own, applied with the next group commit; its rows."""
        rows: list[Any] = await self._submit(Op(kind="single", values=dict(params), statement=statement))
        return rows

    @staticmethod
    async def _pipeline(*calls: Awaitable[Any]) -> list[Any]:
        """Queue statements back to back on the connection's thread and wait for them all at once.

        They run in the order given (aiosqlite's queue is FIFO and the tasks gather makes start in
        order). The first error is raised, and the caller's transaction rolls back.
        """
        results = await asyncio.gather(*calls, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    # --- group commit of holds, settlements and single writes (bot/store/group_commit.py) ----------------

    async def _submit(self, op: Op) -> Any:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return await self._group.submit(op)

    async def _apply(self, batch: list[Op]) -> list[Any]:
        """Apply `batch` in one transaction (the caller holds the write lock); each op's result or error,
        in order. Raises on failure."""
        db = self._conn
        try:
            await db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise NotStarted(exc) from exc
        try:
            outcomes = await self._apply_in_transaction(db, batch)
            await db.commit()
            return outcomes
        except BaseException:
            if db.in_transaction:
                await db.rollback()
            raise

    async def _apply_in_transaction(self, db: aiosqlite.Connection, batch: list[Op]) -> list[Any]:
        finishes = [op for op in batch if op.kind == "finish"]
        holds = [op for op in batch if op.kind == "hold"]
        singles = [op for op in batch if op.kind == "single"]
        calls: list[Awaitable[Any]] = [db.execute_fetchall(op.statement, op.values) for op in singles]
        # Settlements first: they can only free credits for the holds after them.
        finish_ids = list(dict.fromkeys(op.values["id"] for op in finishes))
        if finishes:
            marks = ", ".join("?" * len(finish_ids))
            calls.append(
                db.execute_fetchall(
                    f"SELECT id, status FROM jobs WHERE id IN ({marks}) AND status IN {sql.ACTIVE_SQL}", finish_ids
                )
            )
            calls.append(db.executemany(sql.FINISH_JOB, [op.values for op in finishes]))
            calls.append(db.execute_fetchall(f"SELECT * FROM jobs WHERE id IN ({marks})", finish_ids))
        # Holds: the guarded insert row by row, then each job row only where its hold went in.
        hold_ids = [op.values["id"] for op in holds]
        if holds:
            by_sql: dict[str, list[dict[str, Any]]] = {}
            for op in holds:
                assert op.request is not None
                by_sql.setdefault(op.request.sql, []).append(op.values)
            calls.extend(db.executemany(statement, rows) for statement, rows in by_sql.items())
            calls.append(db.executemany(sql.INSERT_JOB, [op.values for op in holds]))
            marks = ", ".join("?" * len(hold_ids))
            calls.append(db.execute_fetchall(f"SELECT job_id FROM holds WHERE job_id IN ({marks})", hold_ids))
        results = await self._pipeline(*calls)

        outcome: dict[int, Any] = {id(op): list(rows) for op, rows in zip(singles, results, strict=False)}
        if finishes:
            was_active = {row[0]: row[1] for row in results[len(singles)]}
            finished = {row["id"]: row for row in results[len(singles) + 2]}
            for op in finishes:
                job_id = op.values["id"]
                expected = op.values["expect"]
                if job_id in was_active and expected in (None, was_active[job_id]):
                    del was_active[job_id]  # a second settlement in the same batch is a no-op
                    outcome[id(op)] = job_from_row(finished[job_id])
                else:
                    outcome[id(op)] = None
        if holds:
            held = {row[0] for row in results[-1]}
            refused = [op for op in holds if op.values["id"] not in held]
            # The figures of the refused, read in this transaction. They can only be lower than what
            # each guard saw (later holds of the batch only take credits), so needed > available holds.
            requests = [op.request for op in refused if op.request is not None]
            figures = await self._pipeline(
                *(db.execute_fetchall(QUERIES.limit_figures, request.figure_values) for request in requests)
            )
            for op, request, rows in zip(refused, requests, figures, strict=True):
                rows = list(rows)
                outcome[id(op)] = request.refusal(rows[0] if rows else None)
            for op in holds:
                if op.values["id"] in held and op.request is not None:
                    outcome[id(op)] = op.request.record()
        return [outcome[id(op)] for op in batch]

    async def _read(self, statement: str, params: Mapping[str, Any]) -> list[Any]:
        """A plain read: committed data only, never the inside of another task's transaction."""
        if self._reader is not None:
            return list(await self._reader.execute_fetchall(statement, params))
        async with self._lock:
            return list(await self._conn.execute_fetchall(statement, params))

    # --- holds and settlements go through the group commit -----------------------------------------------

    async def _hold(self, request: HoldRequest) -> JobRecord:
        return await self._submit(Op(kind="hold", values=request.values, request=request))

    async def _finish(self, values: dict[str, Any]) -> JobRecord | None:
        return await self._submit(Op(kind="finish", values=values))


