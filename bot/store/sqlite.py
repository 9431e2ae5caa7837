"""The SQLite store: the embedded default, one file in WAL mode, reached through aiosqlite.

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
so one bad operation (say a duplicate job id) fails only its own caller. An operation, once submitted,
runs to the end even if its caller is cancelled.

A file database gets a second, read-only connection for plain reads (balances, listings, policy): it reads
committed data only, never the half of a transaction in progress on the write connection, and it runs in
parallel with the writer. An in-memory database has one connection, so its reads take the lock too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite

from bot.errors import (
    BotDailyCapError,
    BotMonthlyCapError,
    BudgetExhaustedError,
    DefaultModelDisabledError,
    GuildNotApprovedError,
    InsufficientCreditsError,
    ModelDisabledError,
    ServerCapReachedError,
    ServerQueueFullError,
    TooManyJobsError,
)
from bot.store.base import Store
from bot.store.records import (
    ACTIVE_STATUSES,
    Allowance,
    AuditEntry,
    BlockedTerm,
    EntryKind,
    GuildOps,
    GuildPolicy,
    HoldLimits,
    JobRecord,
    JobStatus,
    LedgerEntry,
    MemberTotals,
    NewJob,
    SpendLine,
    Style,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_SECONDS = 10.0
DURATIONS_KEPT_PER_MODEL = 100
MIGRATIONS_PACKAGE = "bot.store.migrations"

_ACTIVE_SQL = "(" + ", ".join(f"'{status.value}'" for status in ACTIVE_STATUSES) + ")"

# Fields `update_job` may set. Identity and money (ids, model, count, price, hold, charge, finish) are
# fixed at creation or set by `finish_job` only.
_UPDATABLE_JOB_FIELDS = frozenset(
    {
        "status",
        "locale",
        "application_id",
        "interaction_token",
        "token_expires_at",
        "reply_message_id",
        "upload_limit",
        "operation_id",
        "params",
        "options",
        "error_key",
        "error_detail",
        "cancel_requested",
        "posted_count",
        "started_at",
        "submitted_at",
        "completed_at",
    }
)
_POLICY_FIELDS = frozenset(
    {
        "timezone",
        "default_allowance",
        "budget",
        "default_model",
        "quote_threshold",
        "models_allowed_by_default",
        "language",
        "spoiler_mode",
    }
)
_NEW_JOB_FIELDS = tuple(f.name for f in dataclass_fields(NewJob))

# --- SQL -----------------------------------------------------------------------------------------------

# Every NewJob field is a column of the same name; the hold amount, status and time are added. The job
# row goes in only when its hold did (the guarded statement before it), so a refused hold writes nothing.
_INSERT_JOB = (
    f"INSERT INTO jobs ({', '.join(_NEW_JOB_FIELDS)}, status, hold_amount, created_at)"
    f" SELECT {', '.join(':' + name for name in _NEW_JOB_FIELDS)}, 'queued', :amount, :now"
    " WHERE EXISTS (SELECT 1 FROM holds WHERE job_id = :id AND created_at = :now)"
)

# The member's available credits and the server's spend, as the guard of a new hold sees them.
# Sums since a period start P: whole 15-minute buckets from B = P rounded up to a bucket (running totals,
# migration 0002), plus the ledger lines from P to B one by one (none when P starts a bucket, as local
# midnights do). The bucket expression is the one the trigger uses, so each line counts exactly once.
_BUCKET_OF = "CAST(created_at / 900 AS INTEGER) * 900"
_MEMBER_NET = f"""
(SELECT coalesce(sum(adjusted - captured), 0) FROM member_buckets
 WHERE guild_id = :guild_id AND user_id = :user_id AND bucket >= :period_bucket)
+ (SELECT coalesce(sum(CASE kind WHEN 'grant' THEN amount ELSE -amount END), 0) FROM ledger
   WHERE guild_id = :guild_id AND user_id = :user_id AND kind IN ('grant', 'deduct', 'capture')
     AND created_at >= :period_start AND created_at < :period_bucket + 1 AND {_BUCKET_OF} < :period_bucket)
"""
_MEMBER_HELD = """
(SELECT coalesce(sum(amount), 0) FROM holds WHERE guild_id = :guild_id AND user_id = :user_id AND state = 'held')
"""
_MEMBER_AVAILABLE = f":allowance + {_MEMBER_NET} - {_MEMBER_HELD}"


def _spend_since(start: str, *, whole_bot: bool = False) -> str:
    """Captured since `:{start}_start` (buckets from `:{start}_bucket`) plus active holds, of the server
    or, with `whole_bot`, of every server: the one definition behind budgets and the operator's caps."""
    guild = "" if whole_bot else "guild_id = :guild_id AND "
    return f"""
(SELECT coalesce(sum(captured), 0) FROM guild_buckets WHERE {guild}bucket >= :{start}_bucket)
+ (SELECT coalesce(sum(amount), 0) FROM ledger
   WHERE {guild}kind = 'capture'
     AND created_at >= :{start}_start AND created_at < :{start}_bucket + 1 AND {_BUCKET_OF} < :{start}_bucket)
+ (SELECT coalesce(sum(amount), 0) FROM holds WHERE {guild}state = 'held')
"""


_SERVER_SPEND = _spend_since("budget")
_INSERT_HOLD = """
INSERT INTO holds (job_id, guild_id, user_id, model, amount, created_at)
SELECT :id, :guild_id, :user_id, :model, :amount, :now
"""
_MEMBER_GUARD = f"({_MEMBER_AVAILABLE}) >= :amount"
_BUDGET_GUARD = f"({_SERVER_SPEND}) + :amount <= :budget"
# Jobs queued or running: exactly the holds still held (every job has one, free jobs too). Counted in the
# guarded insert itself, so a burst of requests cannot all see room for one more.
_MEMBER_JOBS = "(SELECT count(*) FROM holds WHERE guild_id = :guild_id AND user_id = :user_id AND state = 'held')"
_GUILD_JOBS = "(SELECT count(*) FROM holds WHERE guild_id = :guild_id AND state = 'held')"
_QUEUE_GUARD = f"{_MEMBER_JOBS} < :max_member_jobs AND {_GUILD_JOBS} < :max_guild_jobs"
# The operator's caps, in the same guarded statement as the member's and the server's.
_GUILD_CAP_SPEND = _spend_since("cap")
_BOT_DAY_SPEND = _spend_since("bot_day", whole_bot=True)
_BOT_MONTH_SPEND = _spend_since("bot_month", whole_bot=True)
_GUILD_CAP_GUARD = f"({_GUILD_CAP_SPEND}) + :amount <= :guild_cap"
_BOT_DAY_GUARD = f"({_BOT_DAY_SPEND}) + :amount <= :bot_daily_cap"
_BOT_MONTH_GUARD = f"({_BOT_MONTH_SPEND}) + :amount <= :bot_monthly_cap"
_APPROVED = "EXISTS (SELECT 1 FROM guild_ops WHERE guild_id = :guild_id AND approved = 1)"

# What a refused member is told, read in the refused transaction itself (no row when the hold went in).
_LIMIT_FIGURES = f"""
SELECT {_MEMBER_AVAILABLE} AS available, {_SERVER_SPEND} AS spent, {_MEMBER_JOBS} AS member_jobs,
       {_GUILD_JOBS} AS guild_jobs, {_GUILD_CAP_SPEND} AS cap_spent,
       {_BOT_DAY_SPEND} AS bot_day_spent, {_BOT_MONTH_SPEND} AS bot_month_spent, {_APPROVED} AS approved
WHERE NOT EXISTS (SELECT 1 FROM holds WHERE job_id = :id)
"""

# One statement: the trigger jobs_settle_hold settles the hold, and holds_entries_on_settle writes the
# CAPTURE and RELEASE lines, all or nothing.
_FINISH_JOB = f"""
UPDATE jobs SET
    status = :status,
    delivered_count = min(:delivered, count),
    charged = CASE WHEN :status = 'delivered' THEN min(:delivered, count) * price ELSE 0 END,
    error_key = :error_key,
    error_detail = :error_detail,
    interaction_token = NULL,  -- a secret no longer needed once the job ended
    finished_at = :now
WHERE id = :id AND status IN {_ACTIVE_SQL} AND (:expect IS NULL OR status = :expect)
RETURNING *
"""
_MEMBER_TOTALS = f"""
SELECT
    (SELECT coalesce(sum(adjusted), 0) FROM member_buckets
     WHERE guild_id = :guild_id AND user_id = :user_id AND bucket >= :period_bucket)
    + (SELECT coalesce(sum(CASE kind WHEN 'grant' THEN amount ELSE -amount END), 0) FROM ledger
       WHERE guild_id = :guild_id AND user_id = :user_id AND kind IN ('grant', 'deduct')
         AND created_at >= :period_start AND created_at < :period_bucket + 1 AND {_BUCKET_OF} < :period_bucket)
    AS granted,
    (SELECT coalesce(sum(captured), 0) FROM member_buckets
     WHERE guild_id = :guild_id AND user_id = :user_id AND bucket >= :period_bucket)
    + (SELECT coalesce(sum(amount), 0) FROM ledger
       WHERE guild_id = :guild_id AND user_id = :user_id AND kind = 'capture'
         AND created_at >= :period_start AND created_at < :period_bucket + 1 AND {_BUCKET_OF} < :period_bucket)
    AS captured,
    {_MEMBER_HELD} AS held
"""

_GET_POLICY = """
SELECT p.*, p.guild_id IS NOT NULL AS present,
       (SELECT json_group_object(model, allowed) FROM model_rules WHERE guild_id = :guild_id) AS rules
FROM (SELECT :guild_id AS wanted) AS q
LEFT JOIN guild_policy AS p ON p.guild_id = q.wanted
"""
# The policy, the member's override and the role allowances in one read (what every hold needs).
_ALLOWANCE_CONTEXT = """
SELECT p.*, p.guild_id IS NOT NULL AS present,
       (SELECT json_group_object(model, allowed) FROM model_rules WHERE guild_id = :guild_id) AS rules,
       (SELECT json_array(amount, period) FROM member_allowances
        WHERE guild_id = :guild_id AND user_id = :user_id) AS override,
       (SELECT json_group_array(json_array(role_id, amount, period)) FROM role_allowances
        WHERE guild_id = :guild_id) AS roles
FROM (SELECT :guild_id AS wanted) AS q
LEFT JOIN guild_policy AS p ON p.guild_id = q.wanted
"""


# --- helpers -------------------------------------------------------------------------------------------


def _load_migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every `NNNN_name.sql` shipped in bot/store/migrations, in order."""
    found: dict[int, tuple[int, str, str]] = {}
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        version = int(name.split("_", 1)[0])
        if version in found:
            raise RuntimeError(f"two migrations share version {version}: {found[version][1]} and {name}")
        found[version] = (version, name, entry.read_text(encoding="utf-8"))
    return [found[version] for version in sorted(found)]


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


BUCKET_SECONDS = 900


def _bucket_after(start: float) -> int:
    """The first bucket boundary at or after `start` (migration 0002)."""
    return math.ceil(start / BUCKET_SECONDS) * BUCKET_SECONDS


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _allowance(amount: int | None, period: str | None) -> Allowance | None:
    if period is None:
        return None
    return Allowance(amount=amount, period=period)  # type: ignore[arg-type]


def _allowance_json(allowance: Allowance | None) -> dict[str, Any] | None:
    return None if allowance is None else {"amount": allowance.amount, "period": allowance.period}


def _check_allowance(allowance: Allowance | None) -> None:
    if allowance is None:
        return
    if not isinstance(allowance, Allowance):
        raise TypeError(f"expected an Allowance, got {type(allowance).__name__}")
    if allowance.amount is not None and allowance.amount < 0:
        raise ValueError("an allowance cannot be negative")


_JOB_FIELDS = tuple(f.name for f in dataclass_fields(JobRecord))


def _job_from_row(row: sqlite3.Row) -> JobRecord:
    values = {name: row[name] for name in _JOB_FIELDS}
    values["params"] = json.loads(values["params"])
    values["options"] = json.loads(values["options"])
    values["status"] = JobStatus(values["status"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    values["spoiler"] = bool(values["spoiler"])
    return JobRecord(**values)


def _entry_from_row(row: sqlite3.Row) -> LedgerEntry:
    return LedgerEntry(
        id=row["id"],
        guild_id=row["guild_id"],
        user_id=row["user_id"],
        kind=EntryKind(row["kind"]),
        amount=row["amount"],
        created_at=row["created_at"],
        job_id=row["job_id"],
        actor_id=row["actor_id"],
        reason=row["reason"],
        model=row["model"],
    )


def _policy_from_row(guild_id: int, row: sqlite3.Row) -> GuildPolicy:
    rules = {model: bool(allowed) for model, allowed in json.loads(row["rules"] or "{}").items()}
    if not row["present"]:
        return GuildPolicy(guild_id=guild_id, model_rules=rules)
    return GuildPolicy(
        guild_id=guild_id,
        timezone=row["timezone"],
        default_allowance=_allowance(row["default_allowance_amount"], row["default_allowance_period"]),
        budget=_allowance(row["budget_amount"], row["budget_period"]),
        default_model=row["default_model"],
        quote_threshold=row["quote_threshold"],
        model_rules=rules,
        models_allowed_by_default=bool(row["models_allowed_by_default"]),
        language=row["language"],
        spoiler_mode=row["spoiler_mode"],
    )


def _consume_exception(task: asyncio.Task[Any]) -> None:
    # A shielded transaction whose caller was cancelled still reports its error here, not as "never
    # retrieved" noise.
    if not task.cancelled() and task.exception() is not None:
        log.debug("transaction of a cancelled caller failed: %r", task.exception())


MAX_BATCH = 500


class _BeginError(Exception):
    """BEGIN IMMEDIATE failed (the file stayed locked past the busy timeout): nothing was tried."""

    def __init__(self, error: sqlite3.Error) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(eq=False)
class _Op:
    """A hold or a settlement waiting for the next group commit."""

    kind: Literal["hold", "finish"]
    values: dict[str, Any]
    sql: str = ""
    figure_values: dict[str, Any] = field(default_factory=dict)
    job: NewJob | None = None
    limits: HoldLimits | None = None
    check_member: bool = False
    check_budget: bool = False
    check_caps: bool = False
    future: asyncio.Future[Any] = field(init=False)

    def record(self) -> JobRecord:
        job = self.job
        assert job is not None
        return JobRecord(
            **{name: getattr(job, name) for name in _NEW_JOB_FIELDS if name not in ("params", "options")},
            params=json.loads(self.values["params"]),
            options=json.loads(self.values["options"]),
            status=JobStatus.QUEUED,
            hold_amount=self.values["amount"],
            created_at=self.values["now"],
        )

    def refusal(self, figures: sqlite3.Row | None) -> Exception:
        """The error a refused hold raises, with the figures its member and server are at."""
        amount = self.values["amount"]
        if figures is None:
            return RuntimeError(f"hold for job {self.values['id']}: no figures for a refused hold")
        limits = self.limits or HoldLimits(allowance=None, period_start=0.0)
        # The widest limit first: a member refused by the bot's cap is told so, not that they are short.
        if limits.require_approval and not figures["approved"]:
            return GuildNotApprovedError()
        daily, monthly = limits.bot_daily_cap, limits.bot_monthly_cap
        if self.check_caps and daily is not None and figures["bot_day_spent"] + amount > daily:
            return BotDailyCapError()
        if self.check_caps and monthly is not None and figures["bot_month_spent"] + amount > monthly:
            return BotMonthlyCapError()
        cap = limits.guild_cap
        if self.check_caps and cap is not None and figures["cap_spent"] + amount > cap:
            return ServerCapReachedError(needed=amount, remaining=max(cap - figures["cap_spent"], 0))
        if limits.max_member_jobs is not None and figures["member_jobs"] >= limits.max_member_jobs:
            return TooManyJobsError(limit=limits.max_member_jobs)
        if limits.max_guild_jobs is not None and figures["guild_jobs"] >= limits.max_guild_jobs:
            return ServerQueueFullError(limit=limits.max_guild_jobs)
        available, spent = figures["available"], figures["spent"]
        if self.check_member and available < amount:
            return InsufficientCreditsError(needed=amount, available=max(available, 0))
        budget = limits.budget
        if self.check_budget and budget is not None and spent + amount > budget:
            return BudgetExhaustedError(needed=amount, remaining=max(budget - spent, 0))
        return RuntimeError(f"hold for job {self.values['id']} refused but no limit explains it")


class SqliteStore(Store):
    """`Store` on one SQLite file (or `":memory:"`)."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._batch: list[_Op] = []
        self._flusher: asyncio.Task[None] | None = None

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
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)  # submitted holds and settlements are applied, not dropped
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
        migrations = _load_migrations()
        async with self._lock:
            await db.execute("BEGIN IMMEDIATE")  # two processes opening at once: one migrates, one waits
            try:
                await db.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
                )
                rows = await db.execute_fetchall("SELECT coalesce(max(version), 0) FROM schema_version")
                current = next(iter(rows))[0]
                pending = [m for m in migrations if m[0] > current]
                if migrations and current > migrations[-1][0]:
                    log.warning("database schema %s is newer than this code knows (%s)", current, migrations[-1][0])
                for version, name, script in pending:
                    for statement in _split_statements(script):
                        await db.execute(statement)
                    await db.execute(
                        "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                        (version, name, self._clock()),
                    )
                await db.commit()
            except BaseException:
                await db.rollback()
                raise
        if pending:
            log.info("applied migrations %s", ", ".join(name for _, name, _ in pending))

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    # --- transaction plumbing ----------------------------------------------------------------------------

    async def _write(self, body: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run `body` as one transaction, alone on the write connection, to the end.

        COMMIT when `body` returns, ROLLBACK when it raises. Shielded: a caller cancelled half-way does
        not cut the transaction (nor leave it open for the next task to commit).
        """
        task = asyncio.ensure_future(self._locked(body))
        task.add_done_callback(_consume_exception)
        return await asyncio.shield(task)

    async def _locked(self, body: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        async with self._lock:
            db = self._conn
            await db.execute("BEGIN IMMEDIATE")
            try:
                result = await body(db)
                await db.commit()
                return result
            except BaseException:
                if db.in_transaction:
                    await db.rollback()
                raise

    async def _single(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[sqlite3.Row]:
        """One write statement in autocommit: atomic on its own, one hop. Runs to the end once queued."""
        async with self._lock:
            return list(await self._conn.execute_fetchall(sql, params))

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

    # --- group commit of holds and settlements -------------------------------------------------------------

    async def _submit(self, op: _Op) -> Any:
        if self._db is None:
            raise RuntimeError("the store is not open")
        op.future = asyncio.get_running_loop().create_future()
        self._batch.append(op)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        # Cancelling the caller cancels only its wait: the operation is queued and will be applied.
        return await op.future

    async def _flush(self) -> None:
        while self._batch:
            batch: list[_Op] = []
            try:
                async with self._lock:
                    batch, self._batch = self._batch[:MAX_BATCH], self._batch[MAX_BATCH:]
                    outcomes = await self._apply_or_split(batch)
            except BaseException as exc:  # cancelled (shutdown): nobody may wait forever
                failed, self._batch = batch + self._batch, []
                for op in failed:
                    if not op.future.done():
                        op.future.set_exception(
                            RuntimeError(
                                f"the store was stopped while applying this ({exc!r}); see active_jobs after restart"
                            )
                        )
                raise
            for op, outcome in zip(batch, outcomes, strict=True):
                if op.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    op.future.set_exception(outcome)
                else:
                    op.future.set_result(outcome)

    async def _apply_or_split(self, batch: list[_Op]) -> list[Any]:
        try:
            return await self._apply(batch)
        except _BeginError as exc:
            return [exc.error] * len(batch)
        except Exception as exc:  # every failure goes back to its callers
            if len(batch) == 1:
                return [exc]
            log.warning("a batch of %d writes failed (%r); applying them one by one", len(batch), exc)
            outcomes: list[Any] = []
            for op in batch:
                outcomes.extend(await self._apply_or_split([op]))
            return outcomes

    async def _apply(self, batch: list[_Op]) -> list[Any]:
        """Apply `batch` in one transaction; each op's result or error, in order. Raises on failure."""
        db = self._conn
        try:
            await db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _BeginError(exc) from exc
        try:
            outcomes = await self._apply_in_transaction(db, batch)
            await db.commit()
            return outcomes
        except BaseException:
            if db.in_transaction:
                await db.rollback()
            raise

    async def _apply_in_transaction(self, db: aiosqlite.Connection, batch: list[_Op]) -> list[Any]:
        finishes = [op for op in batch if op.kind == "finish"]
        holds = [op for op in batch if op.kind == "hold"]
        calls: list[Awaitable[Any]] = []
        # Settlements first: they can only free credits for the holds after them.
        finish_ids = list(dict.fromkeys(op.values["id"] for op in finishes))
        if finishes:
            marks = ", ".join("?" * len(finish_ids))
            calls.append(
                db.execute_fetchall(
                    f"SELECT id, status FROM jobs WHERE id IN ({marks}) AND status IN {_ACTIVE_SQL}", finish_ids
                )
            )
            calls.append(db.executemany(_FINISH_JOB, [op.values for op in finishes]))
            calls.append(db.execute_fetchall(f"SELECT * FROM jobs WHERE id IN ({marks})", finish_ids))
        # Holds: the guarded insert row by row, then each job row only where its hold went in.
        hold_ids = [op.values["id"] for op in holds]
        if holds:
            by_sql: dict[str, list[dict[str, Any]]] = {}
            for op in holds:
                by_sql.setdefault(op.sql, []).append(op.values)
            calls.extend(db.executemany(sql, rows) for sql, rows in by_sql.items())
            calls.append(db.executemany(_INSERT_JOB, [op.values for op in holds]))
            marks = ", ".join("?" * len(hold_ids))
            calls.append(db.execute_fetchall(f"SELECT job_id FROM holds WHERE job_id IN ({marks})", hold_ids))
        results = await self._pipeline(*calls)

        outcome: dict[int, Any] = {}
        if finishes:
            was_active = {row[0]: row[1] for row in results[0]}
            finished = {row["id"]: row for row in results[2]}
            for op in finishes:
                job_id = op.values["id"]
                expected = op.values["expect"]
                if job_id in was_active and expected in (None, was_active[job_id]):
                    del was_active[job_id]  # a second settlement in the same batch is a no-op
                    outcome[id(op)] = _job_from_row(finished[job_id])
                else:
                    outcome[id(op)] = None
        if holds:
            held = {row[0] for row in results[-1]}
            refused = [op for op in holds if op.values["id"] not in held]
            # The figures of the refused, read in this transaction. They can only be lower than what
            # each guard saw (later holds of the batch only take credits), so needed > available holds.
            figures = await self._pipeline(*(db.execute_fetchall(_LIMIT_FIGURES, op.figure_values) for op in refused))
            for op, rows in zip(refused, figures, strict=True):
                rows = list(rows)
                outcome[id(op)] = op.refusal(rows[0] if rows else None)
            for op in holds:
                if op.values["id"] in held:
                    outcome[id(op)] = op.record()
        return [outcome[id(op)] for op in batch]

    async def _read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """A plain read: committed data only, never the inside of another task's transaction."""
        if self._reader is not None:
            return list(await self._reader.execute_fetchall(sql, params))
        async with self._lock:
            return list(await self._conn.execute_fetchall(sql, params))

    # --- small bot state ---------------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        rows = await self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        sql = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        await self._single(sql, (key, value))

    # --- credits -----------------------------------------------------------------------------------------

    async def create_job_with_hold(self, job: NewJob, limits: HoldLimits, *, now: float) -> JobRecord:
        if job.count < 1 or job.price < 0:
            raise ValueError(f"a job needs count >= 1 and price >= 0 (got {job.count}, {job.price})")
        amount = job.hold_amount
        # A free job needs no credits; otherwise guard only on the limits that exist, so that a server
        # without a budget never pays for summing its spend.
        check_member = limits.allowance is not None and amount > 0
        check_budget = limits.budget is not None and amount > 0
        check_queue = limits.max_member_jobs is not None or limits.max_guild_jobs is not None
        check_caps = amount > 0
        guards = [
            g
            for g, on in (
                (_APPROVED, limits.require_approval),
                (_BOT_DAY_GUARD, check_caps and limits.bot_daily_cap is not None),
                (_BOT_MONTH_GUARD, check_caps and limits.bot_monthly_cap is not None),
                (_GUILD_CAP_GUARD, check_caps and limits.guild_cap is not None),
                (_QUEUE_GUARD, check_queue),
                (_MEMBER_GUARD, check_member),
                (_BUDGET_GUARD, check_budget),
            )
            if on
        ]
        hold_sql = _INSERT_HOLD + ("WHERE " + " AND ".join(guards) if guards else "")
        params_json = _dump(job.params)
        options_json = _dump(job.options)
        values: dict[str, Any] = {name: getattr(job, name) for name in _NEW_JOB_FIELDS}
        values.update(
            params=params_json,
            options=options_json,
            amount=amount,
            now=now,
            allowance=limits.allowance,
            period_start=limits.period_start,
            period_bucket=_bucket_after(limits.period_start),
            budget=limits.budget,
            budget_start=limits.budget_period_start,
            budget_bucket=_bucket_after(limits.budget_period_start),
            # SQLite integers are 64-bit: "no limit" is a count no server reaches.
            max_member_jobs=limits.max_member_jobs if limits.max_member_jobs is not None else 2**62,
            max_guild_jobs=limits.max_guild_jobs if limits.max_guild_jobs is not None else 2**62,
            guild_cap=limits.guild_cap,
            cap_start=limits.guild_cap_start,
            cap_bucket=_bucket_after(limits.guild_cap_start),
            bot_daily_cap=limits.bot_daily_cap,
            bot_day_start=limits.bot_day_start,
            bot_day_bucket=_bucket_after(limits.bot_day_start),
            bot_monthly_cap=limits.bot_monthly_cap,
            bot_month_start=limits.bot_month_start,
            bot_month_bucket=_bucket_after(limits.bot_month_start),
        )

        return await self._submit(
            _Op(
                kind="hold",
                sql=hold_sql,
                values=values,
                figure_values={**values, "allowance": limits.allowance or 0},
                job=job,
                limits=limits,
                check_member=check_member,
                check_budget=check_budget,
                check_caps=check_caps,
            )
        )

    async def finish_job(
        self,
        job_id: str,
        status: JobStatus,
        *,
        delivered_count: int = 0,
        error_key: str | None = None,
        error_detail: str | None = None,
        expect: JobStatus | None = None,
        now: float,
    ) -> JobRecord | None:
        status = JobStatus(status)
        if not status.is_terminal:
            raise ValueError(f"finish_job needs a terminal status, not {status.value}")
        if delivered_count < 0:
            raise ValueError("delivered_count cannot be negative")
        values = {
            "id": job_id,
            "status": status.value,
            "delivered": delivered_count if status is JobStatus.DELIVERED else 0,
            "error_key": error_key,
            "error_detail": error_detail,
            "expect": None if expect is None else JobStatus(expect).value,
            "now": now,
        }

        return await self._submit(_Op(kind="finish", values=values))

    async def member_totals(self, guild_id: int, user_id: int, period_start: float) -> MemberTotals:
        rows = await self._read(
            _MEMBER_TOTALS,
            {
                "guild_id": guild_id,
                "user_id": user_id,
                "period_start": period_start,
                "period_bucket": _bucket_after(period_start),
            },
        )
        granted, captured, held = rows[0]
        return MemberTotals(granted=granted, captured=captured, held=held)

    async def server_spend(self, guild_id: int, period_start: float) -> int:
        rows = await self._read(
            f"SELECT {_SERVER_SPEND}",
            {"guild_id": guild_id, "budget_start": period_start, "budget_bucket": _bucket_after(period_start)},
        )
        return int(rows[0][0])

    async def bot_spend(self, period_start: float) -> int:
        rows = await self._read(
            f"SELECT {_BOT_DAY_SPEND}", {"bot_day_start": period_start, "bot_day_bucket": _bucket_after(period_start)}
        )
        return int(rows[0][0])

    async def spend_by_guild_and_model(self, start: float) -> list[SpendLine]:
        rows = await self._read(
            "SELECT guild_id, coalesce(model, '') AS model, sum(amount) AS captured FROM ledger"
            " WHERE kind = 'capture' AND created_at >= ? GROUP BY 1, 2 ORDER BY captured DESC, guild_id, model",
            (start,),
        )
        return [SpendLine(int(row[0]), row[1], int(row[2])) for row in rows]

    async def add_adjustment(
        self,
        guild_id: int,
        user_id: int,
        kind: EntryKind,
        amount: int,
        *,
        actor_id: int,
        reason: str,
        now: float,
    ) -> LedgerEntry:
        kind = EntryKind(kind)
        if kind not in (EntryKind.GRANT, EntryKind.DEDUCT):
            raise ValueError(f"an adjustment is a grant or a deduction, not {kind.value}")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise ValueError(f"an adjustment needs a positive whole amount, not {amount!r}")
        detail = {"user_id": user_id, "kind": kind.value, "amount": amount, "reason": reason}

        async def body(db: aiosqlite.Connection) -> int:
            rows, _ = await self._pipeline(
                db.execute_fetchall(
                    "INSERT INTO ledger (guild_id, user_id, kind, amount, actor_id, reason, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (guild_id, user_id, kind.value, amount, actor_id, reason, now),
                ),
                # last_insert_rowid() is the ledger line just written: the statements run in order.
                db.execute(
                    "INSERT INTO audit_log (guild_id, actor_id, action, detail, created_at)"
                    " VALUES (?, ?, ?, json_set(?, '$.entry_id', last_insert_rowid()), ?)",
                    (guild_id, actor_id, f"ledger.{kind.value}", _dump(detail), now),
                ),
            )
            return int(next(iter(rows))[0])

        entry_id = await self._write(body)
        return LedgerEntry(
            id=entry_id,
            guild_id=guild_id,
            user_id=user_id,
            kind=kind,
            amount=amount,
            created_at=now,
            actor_id=actor_id,
            reason=reason,
        )

    async def ledger_entries(
        self, guild_id: int, start: float, end: float, *, user_id: int | None = None
    ) -> list[LedgerEntry]:
        if user_id is None:
            rows = await self._read(
                "SELECT * FROM ledger WHERE guild_id = ? AND created_at >= ? AND created_at < ?"
                " ORDER BY created_at, id",
                (guild_id, start, end),
            )
        else:
            rows = await self._read(
                "SELECT * FROM ledger WHERE guild_id = ? AND user_id = ? AND created_at >= ? AND created_at < ?"
                " ORDER BY created_at, id",
                (guild_id, user_id, start, end),
            )
        return [_entry_from_row(row) for row in rows]

    async def usage_by_model(self, guild_id: int, start: float, *, user_id: int | None = None) -> dict[str, int]:
        sql = (
            "SELECT coalesce(model, ''), sum(amount) FROM ledger"
            " WHERE guild_id = :guild_id AND kind = 'capture' AND created_at >= :start"
        )
        if user_id is not None:
            sql += " AND user_id = :user_id"
        rows = await self._read(sql + " GROUP BY 1", {"guild_id": guild_id, "start": start, "user_id": user_id})
        return {model: int(total) for model, total in rows}

    async def top_spenders(self, guild_id: int, start: float, limit: int) -> list[tuple[int, int]]:
        rows = await self._read(
            "SELECT user_id, sum(amount) AS spent FROM ledger"
            " WHERE guild_id = ? AND kind = 'capture' AND created_at >= ?"
            " GROUP BY user_id ORDER BY spent DESC, user_id LIMIT ?",
            (guild_id, start, limit),
        )
        return [(int(user), int(spent)) for user, spent in rows]

    # --- jobs --------------------------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobRecord | None:
        rows = await self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job_from_row(rows[0]) if rows else None

    async def update_job(
        self, job_id: str, *, expect: Sequence[JobStatus] | None = None, **fields: Any
    ) -> JobRecord | None:
        unknown = set(fields) - _UPDATABLE_JOB_FIELDS
        if unknown:
            raise ValueError(f"update_job cannot set {', '.join(sorted(unknown))}")
        values = dict(fields)
        if "status" in values:
            status = JobStatus(values["status"])
            if status.is_terminal:
                raise ValueError(f"{status.value} is terminal: use finish_job")
            values["status"] = status.value
        for name in ("params", "options"):
            if name in values:
                values[name] = _dump(values[name])
        if "cancel_requested" in values:
            values["cancel_requested"] = int(bool(values["cancel_requested"]))
        allowed = [s.value for s in ACTIVE_STATUSES]
        if expect is not None:
            wanted = {JobStatus(s).value for s in expect}
            allowed = [s for s in allowed if s in wanted]
            if not allowed:
                return None
        assignments = ", ".join(f"{name} = ?" for name in values) or "id = id"
        sql = f"UPDATE jobs SET {assignments} WHERE id = ? AND status IN ({', '.join('?' * len(allowed))}) RETURNING *"

        rows = await self._single(sql, (*values.values(), job_id, *allowed))
        return _job_from_row(rows[0]) if rows else None

    async def active_jobs(self) -> list[JobRecord]:
        rows = await self._read(f"SELECT * FROM jobs WHERE status IN {_ACTIVE_SQL} ORDER BY created_at, rowid")
        return [_job_from_row(row) for row in rows]

    async def recent_jobs(self, guild_id: int, user_id: int, limit: int) -> list[JobRecord]:
        rows = await self._read(
            "SELECT * FROM jobs WHERE guild_id = ? AND user_id = ? ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (guild_id, user_id, limit),
        )
        return [_job_from_row(row) for row in rows]

    # --- adaptive polling history ------------------------------------------------------------------------

    async def record_duration(self, model: str, seconds: float, *, now: float) -> None:
        # Insert, then trim to the newest DURATIONS_KEPT_PER_MODEL (a failed trim is harmless).
        async def body(db: aiosqlite.Connection) -> None:
            await self._pipeline(
                db.execute(
                    "INSERT INTO model_durations (model, seconds, recorded_at) VALUES (?, ?, ?)",
                    (model, seconds, now),
                ),
                db.execute(
                    "DELETE FROM model_durations WHERE model = :model AND id <= ("
                    " SELECT id FROM model_durations WHERE model = :model"
                    " ORDER BY id DESC LIMIT 1 OFFSET :keep)",
                    {"model": model, "keep": DURATIONS_KEPT_PER_MODEL},
                ),
            )

        await self._write(body)

    async def recent_durations(self, model: str, limit: int) -> list[float]:
        rows = await self._read(
            "SELECT seconds FROM model_durations WHERE model = ? ORDER BY id DESC LIMIT ?", (model, limit)
        )
        return [float(row[0]) for row in rows]

    # --- server policy -----------------------------------------------------------------------------------

    async def get_policy(self, guild_id: int) -> GuildPolicy:
        rows = await self._read(_GET_POLICY, {"guild_id": guild_id})
        return _policy_from_row(guild_id, rows[0])

    async def allowance_context(
        self, guild_id: int, user_id: int
    ) -> tuple[Allowance | None, dict[int, Allowance], GuildPolicy]:
        rows = await self._read(_ALLOWANCE_CONTEXT, {"guild_id": guild_id, "user_id": user_id})
        row = rows[0]
        override = None
        if row["override"] is not None:
            amount, period = json.loads(row["override"])
            override = Allowance(amount=amount, period=period)
        by_role = {
            int(role): Allowance(amount=amount, period=period) for role, amount, period in json.loads(row["roles"])
        }
        return override, by_role, _policy_from_row(guild_id, row)

    async def update_policy(self, guild_id: int, *, actor_id: int, now: float, **changes: Any) -> GuildPolicy:
        unknown = set(changes) - _POLICY_FIELDS
        if unknown:
            raise ValueError(f"update_policy cannot set {', '.join(sorted(unknown))}")
        columns: dict[str, Any] = {}
        detail: dict[str, Any] = {}
        for name, value in changes.items():
            if name in ("default_allowance", "budget"):
                _check_allowance(value)
                columns[f"{name}_amount"] = None if value is None else value.amount
                columns[f"{name}_period"] = None if value is None else value.period
                detail[name] = _allowance_json(value)
            elif name == "models_allowed_by_default":
                columns[name] = int(bool(value))
                detail[name] = bool(value)
            elif name == "timezone":
                if not isinstance(value, str) or not value:
                    raise ValueError("timezone must be a non-empty IANA name")
                columns[name] = detail[name] = value
            else:
                columns[name] = detail[name] = value
        columns["updated_at"] = now
        names = ", ".join(columns)
        marks = ", ".join("?" * len(columns))
        updates = ", ".join(f"{name} = excluded.{name}" for name in columns)
        upsert = (
            f"INSERT INTO guild_policy (guild_id, {names}) VALUES (?, {marks})"
            f" ON CONFLICT (guild_id) DO UPDATE SET {updates}"
        )

        async def body(db: aiosqlite.Connection) -> GuildPolicy:
            if "default_model" in changes and changes["default_model"] is not None:
                current = await self._policy_in(db, guild_id)
                if not current.is_model_allowed(changes["default_model"]):
                    raise ModelDisabledError(model=changes["default_model"])
            _, _, rows = await self._pipeline(
                db.execute(upsert, (guild_id, *columns.values())),
                self._audit(db, guild_id, actor_id, "policy.update", detail, now),
                db.execute_fetchall(_GET_POLICY, {"guild_id": guild_id}),
            )
            return _policy_from_row(guild_id, next(iter(rows)))

        return await self._write(body)

    async def _policy_in(self, db: aiosqlite.Connection, guild_id: int) -> GuildPolicy:
        """The policy as the write transaction on `db` sees it (for checks that must not race)."""
        rows = await db.execute_fetchall(_GET_POLICY, {"guild_id": guild_id})
        return _policy_from_row(guild_id, next(iter(rows)))

    async def set_model_rule(
        self,
        guild_id: int,
        model: str,
        allowed: bool | None,
        *,
        actor_id: int,
        now: float,
        fallback_default: str | None = None,
    ) -> GuildPolicy:
        if allowed is None:
            db_sql = "DELETE FROM model_rules WHERE guild_id = ? AND model = ?"
            args: tuple[Any, ...] = (guild_id, model)
        else:
            db_sql = (
                "INSERT INTO model_rules (guild_id, model, allowed) VALUES (?, ?, ?)"
                " ON CONFLICT (guild_id, model) DO UPDATE SET allowed = excluded.allowed"
            )
            args = (guild_id, model, int(allowed))
        detail = {"model": model, "allowed": allowed}

        async def body(db: aiosqlite.Connection) -> GuildPolicy:
            if allowed is False:
                current = await self._policy_in(db, guild_id)
                if model == (current.default_model or fallback_default):
                    raise DefaultModelDisabledError(model=model)
            _, _, rows = await self._pipeline(
                db.execute(db_sql, args),
                self._audit(db, guild_id, actor_id, "policy.model_rule", detail, now),
                db.execute_fetchall(_GET_POLICY, {"guild_id": guild_id}),
            )
            return _policy_from_row(guild_id, next(iter(rows)))

        return await self._write(body)

    async def role_allowances(self, guild_id: int) -> dict[int, Allowance]:
        rows = await self._read("SELECT role_id, amount, period FROM role_allowances WHERE guild_id = ?", (guild_id,))
        return {int(role): Allowance(amount=amount, period=period) for role, amount, period in rows}

    async def set_role_allowance(
        self, guild_id: int, role_id: int, allowance: Allowance | None, *, actor_id: int, now: float
    ) -> None:
        await self._set_allowance("role_allowances", "role_id", guild_id, role_id, allowance, actor_id, now)

    async def member_allowance(self, guild_id: int, user_id: int) -> Allowance | None:
        rows = await self._read(
            "SELECT amount, period FROM member_allowances WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        )
        return Allowance(amount=rows[0][0], period=rows[0][1]) if rows else None

    async def set_member_allowance(
        self, guild_id: int, user_id: int, allowance: Allowance | None, *, actor_id: int, now: float
    ) -> None:
        await self._set_allowance("member_allowances", "user_id", guild_id, user_id, allowance, actor_id, now)

    async def _set_allowance(
        self,
        table: str,
        key: str,
        guild_id: int,
        target_id: int,
        allowance: Allowance | None,
        actor_id: int,
        now: float,
    ) -> None:
        _check_allowance(allowance)
        if allowance is None:
            sql = f"DELETE FROM {table} WHERE guild_id = ? AND {key} = ?"
            args: tuple[Any, ...] = (guild_id, target_id)
        else:
            sql = (
                f"INSERT INTO {table} (guild_id, {key}, amount, period) VALUES (?, ?, ?, ?)"
                f" ON CONFLICT (guild_id, {key}) DO UPDATE SET amount = excluded.amount, period = excluded.period"
            )
            args = (guild_id, target_id, allowance.amount, allowance.period)
        action = "allowance.role" if key == "role_id" else "allowance.member"
        detail = {key: target_id, "allowance": _allowance_json(allowance)}

        async def body(db: aiosqlite.Connection) -> None:
            await self._pipeline(db.execute(sql, args), self._audit(db, guild_id, actor_id, action, detail, now))

        await self._write(body)

    async def recent_audit(self, guild_id: int, limit: int) -> list[AuditEntry]:
        rows = await self._read(
            "SELECT * FROM audit_log WHERE guild_id = ? ORDER BY id DESC LIMIT ?", (guild_id, limit)
        )
        return [_audit_from_row(row) for row in rows]

    @staticmethod
    def _audit(
        db: aiosqlite.Connection, guild_id: int, actor_id: int, action: str, detail: dict[str, Any], now: float
    ) -> Awaitable[Any]:
        return db.execute(
            "INSERT INTO audit_log (guild_id, actor_id, action, detail, created_at) VALUES (?, ?, ?, ?, ?)",
            (guild_id, actor_id, action, _dump(detail), now),
        )

    # --- moderation --------------------------------------------------------------------------------------

    async def blocked_terms(self, guild_id: int) -> list[BlockedTerm]:
        rows = await self._read("SELECT * FROM blocked_terms WHERE guild_id = ? ORDER BY id", (guild_id,))
        return [
            BlockedTerm(
                id=row["id"],
                guild_id=row["guild_id"],
                pattern=row["pattern"],
                is_regex=bool(row["is_regex"]),
                created_by=row["created_by"],
                created_at=row["created_at"],
            )
            for row in rows
        ]

    async def blocklist_version(self, guild_id: int) -> int:
        rows = await self._read("SELECT version FROM blocklist_versions WHERE guild_id = ?", (guild_id,))
        return int(rows[0][0]) if rows else 0

    @staticmethod
    def _bump_blocklist(db: aiosqlite.Connection, guild_id: int) -> Awaitable[Any]:
        return db.execute(
            "INSERT INTO blocklist_versions (guild_id, version) VALUES (?, 1)"
            " ON CONFLICT (guild_id) DO UPDATE SET version = version + 1",
            (guild_id,),
        )

    async def add_blocked_term(
        self, guild_id: int, pattern: str, is_regex: bool, *, actor_id: int, now: float, max_terms: int | None = None
    ) -> BlockedTerm | None:
        limit = -1 if max_terms is None else max_terms

        async def body(db: aiosqlite.Connection) -> int | None:
            # The count and the insert are one statement in the write transaction: two admins adding at
            # once cannot pass the cap together.
            rows = list(
                await db.execute_fetchall(
                    "INSERT INTO blocked_terms (guild_id, pattern, is_regex, created_by, created_at)"
                    " SELECT ?, ?, ?, ?, ?"
                    " WHERE ? < 0 OR (SELECT COUNT(*) FROM blocked_terms WHERE guild_id = ?) < ?"
                    " RETURNING id",
                    (guild_id, pattern, int(bool(is_regex)), actor_id, now, limit, guild_id, limit),
                )
            )
            if not rows:
                return None
            term_id = int(rows[0][0])
            detail = {"pattern": pattern, "is_regex": bool(is_regex), "term_id": term_id}
            await self._pipeline(
                self._audit(db, guild_id, actor_id, "blocked_term.add", detail, now), self._bump_blocklist(db, guild_id)
            )
            return term_id

        term_id = await self._write(body)
        if term_id is None:
            return None
        return BlockedTerm(
            id=term_id, guild_id=guild_id, pattern=pattern, is_regex=bool(is_regex), created_by=actor_id, created_at=now
        )

    async def remove_blocked_term(self, guild_id: int, term_id: int, *, actor_id: int, now: float) -> bool:
        async def body(db: aiosqlite.Connection) -> bool:
            rows = list(
                await db.execute_fetchall(
                    "DELETE FROM blocked_terms WHERE guild_id = ? AND id = ? RETURNING pattern, is_regex",
                    (guild_id, term_id),
                )
            )
            if not rows:
                return False
            detail = {"term_id": term_id, "pattern": rows[0][0], "is_regex": bool(rows[0][1])}
            await self._pipeline(
                self._audit(db, guild_id, actor_id, "blocked_term.remove", detail, now),
                self._bump_blocklist(db, guild_id),
            )
            return True

        return await self._write(body)

    # --- the operator's seat -------------------------------------------------------------------------------

    async def get_guild_ops(self, guild_id: int) -> GuildOps:
        rows = await self._read("SELECT * FROM guild_ops WHERE guild_id = ?", (guild_id,))
        return _guild_ops_from_row(guild_id, rows[0] if rows else None)

    async def all_guild_ops(self) -> list[GuildOps]:
        rows = await self._read("SELECT * FROM guild_ops ORDER BY guild_id")
        return [_guild_ops_from_row(int(row["guild_id"]), row) for row in rows]

    async def set_guild_ops(self, guild_id: int, *, actor_id: int, now: float, **changes: Any) -> GuildOps:
        columns: dict[str, Any] = {}
        detail: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "cap":
                _check_allowance(value)
                if value is not None and value.unlimited:
                    raise ValueError("a cap has an amount and a period; None removes it")
                columns["cap_amount"] = None if value is None else value.amount
                columns["cap_period"] = None if value is None else value.period
                detail["cap"] = _allowance_json(value)
            elif name == "approved":
                columns["approved"] = int(bool(value))
                detail["approved"] = bool(value)
            elif name == "log_channel_id":
                columns["log_channel_id"] = detail["log_channel_id"] = value
            else:
                raise ValueError(f"set_guild_ops cannot set {name}")
        columns["updated_at"] = now
        names = ", ".join(columns)
        marks = ", ".join("?" * len(columns))
        updates = ", ".join(f"{name} = excluded.{name}" for name in columns)
        upsert = (
            f"INSERT INTO guild_ops (guild_id, {names}) VALUES (?, {marks})"
            f" ON CONFLICT (guild_id) DO UPDATE SET {updates}"
        )
        action = "server.log_channel" if set(changes) == {"log_channel_id"} else "operator.server"

        async def body(db: aiosqlite.Connection) -> GuildOps:
            _, _, rows = await self._pipeline(
                db.execute(upsert, (guild_id, *columns.values())),
                self._audit(db, guild_id, actor_id, action, detail, now),
                db.execute_fetchall("SELECT * FROM guild_ops WHERE guild_id = ?", (guild_id,)),
            )
            return _guild_ops_from_row(guild_id, next(iter(rows)))

        return await self._write(body)

    async def claim_alert(self, key: str, *, now: float) -> bool:
        rows = await self._single(
            "INSERT INTO alerts_sent (key, sent_at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING RETURNING key",
            (key, now),
        )
        return bool(rows)

    async def audit_after(self, guild_id: int, after_id: int, limit: int) -> list[AuditEntry]:
        rows = await self._read(
            "SELECT * FROM audit_log WHERE guild_id = ? AND id > ? ORDER BY id LIMIT ?", (guild_id, after_id, limit)
        )
        return [_audit_from_row(row) for row in rows]

    async def job_counts(self) -> dict[JobStatus, int]:
        rows = await self._read(f"SELECT status, count(*) FROM jobs WHERE status IN {_ACTIVE_SQL} GROUP BY status")
        return {JobStatus(status): int(n) for status, n in rows}


    # --- member preferences, server styles and channel rules ---------------------------------------------

    async def member_defaults(self, guild_id: int, user_id: int) -> dict[str, Any]:
        rows = await self._read(
            "SELECT defaults FROM member_defaults WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        )
        return dict(json.loads(rows[0]["defaults"])) if rows else {}

    async def set_member_defaults(
        self, guild_id: int, user_id: int, defaults: dict[str, Any] | None, *, now: float
    ) -> None:
        if defaults:
            await self._single(
                "INSERT INTO member_defaults (guild_id, user_id, defaults, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (guild_id, user_id) DO UPDATE SET defaults = excluded.defaults,"
                " updated_at = excluded.updated_at",
                (guild_id, user_id, _dump(defaults), now),
            )
        else:
            await self._single("DELETE FROM member_defaults WHERE guild_id = ? AND user_id = ?", (guild_id, user_id))

    async def styles(self, guild_id: int) -> list[Style]:
        rows = await self._read("SELECT * FROM styles WHERE guild_id = ? ORDER BY name", (guild_id,))
        return [
            Style(
                guild_id=row["guild_id"],
                name=row["name"],
                template=row["template"],
                created_by=row["created_by"],
                created_at=row["created_at"],
            )
            for row in rows
        ]

    async def put_style(self, guild_id: int, name: str, template: str, *, actor_id: int, now: float) -> Style:
        async def body(db: aiosqlite.Connection) -> None:
            await self._pipeline(
                db.execute(
                    "INSERT INTO styles (guild_id, name, template, created_by, created_at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (guild_id, name) DO UPDATE SET template = excluded.template,"
                    " created_by = excluded.created_by, created_at = excluded.created_at",
                    (guild_id, name, template, actor_id, now),
                ),
                self._audit(db, guild_id, actor_id, "style.put", {"name": name, "template": template}, now),
            )

        await self._write(body)
        return Style(guild_id=guild_id, name=name, template=template, created_by=actor_id, created_at=now)

    async def remove_style(self, guild_id: int, name: str, *, actor_id: int, now: float) -> bool:
        async def body(db: aiosqlite.Connection) -> bool:
            rows = list(
                await db.execute_fetchall(
                    "DELETE FROM styles WHERE guild_id = ? AND name = ? RETURNING template", (guild_id, name)
                )
            )
            if not rows:
                return False
            await self._audit(db, guild_id, actor_id, "style.remove", {"name": name, "template": rows[0][0]}, now)
            return True

        return await self._write(body)

    async def allowed_channels(self, guild_id: int) -> list[int]:
        rows = await self._read(
            "SELECT channel_id FROM channel_rules WHERE guild_id = ? ORDER BY channel_id", (guild_id,)
        )
        return [int(row[0]) for row in rows]

    async def set_channel_allowed(
        self, guild_id: int, channel_id: int, allowed: bool, *, actor_id: int, now: float
    ) -> bool:
        change = (
            "INSERT INTO channel_rules (guild_id, channel_id) VALUES (?, ?) ON CONFLICT DO NOTHING RETURNING 1"
            if allowed
            else "DELETE FROM channel_rules WHERE guild_id = ? AND channel_id = ? RETURNING 1"
        )
        action = "channel.allow" if allowed else "channel.disallow"

        async def body(db: aiosqlite.Connection) -> bool:
            if not list(await db.execute_fetchall(change, (guild_id, channel_id))):
                return False
            await self._audit(db, guild_id, actor_id, action, {"channel_id": channel_id}, now)
            return True

        return await self._write(body)


def _guild_ops_from_row(guild_id: int, row: sqlite3.Row | None) -> GuildOps:
    if row is None:
        return GuildOps(guild_id=guild_id)
    return GuildOps(
        guild_id=guild_id,
        cap=_allowance(row["cap_amount"], row["cap_period"]),
        approved=bool(row["approved"]),
        log_channel_id=row["log_channel_id"],
    )


def _audit_from_row(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        guild_id=row["guild_id"],
        actor_id=row["actor_id"],
        action=row["action"],
        detail=json.loads(row["detail"]),
        created_at=row["created_at"],
    )
