"""What the SQLite and PostgreSQL stores share: every `Store` method, on a few dialect primitives.

A dialect store (bot/store/sqlite.py, bot/store/postgres.py) supplies only how to talk to its database:
`_read` (a plain read of committed data), `_single` (one write statement, atomic on its own), `_write` (a
transaction, with `Tx.lock` for cross-process locks), `_hold` and `_finish` (how a hold and a settlement
are committed: SQLite groups them, PostgreSQL locks per member and server), and its migrations. The rules
(what may change, what is audited, how rows become records) and the SQL (bot/store/sql.py) live here once.
"""

from __future__ import annotations

import json
import logging
import re
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from importlib import resources
from typing import Any, Protocol, TypeVar

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
from bot.store import sql
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
    ProcessRecord,
    RunLimits,
    SpendLine,
    Style,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

DURATIONS_KEPT_PER_MODEL = 100
MIGRATIONS_PACKAGE = "bot.store.migrations"

# Fields `update_job` may set. Identity and money (ids, model, count, price, hold, charge, finish) are
# fixed at creation or set by `finish_job` only; ownership goes through the lease methods.
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
# "No queue limit" as a count no server reaches (both databases' integers are 64-bit).
_NO_LIMIT = 2**62
_JOB_FIELDS = tuple(f.name for f in dataclass_fields(JobRecord))


class Row(Protocol):
    """A result row: sqlite3.Row and asyncpg.Record both index by name and by position."""

    def __getitem__(self, key: Any) -> Any: ...


class Tx(Protocol):
    """A transaction in progress, as the shared code sees it."""

    async def fetch(self, statement: str, params: Mapping[str, Any]) -> list[Any]:
        """Run one statement (named parameters) and return its rows."""

    async def lock(self, keys: Sequence[tuple[str, bool]]) -> None:
        """Hold (key, exclusive) locks until the transaction ends, taken in the order given.

        SQLite has nothing to do (its write transaction already excludes every other writer); PostgreSQL
        takes transaction-scoped advisory locks, so callers always pass keys in one global order.
        """


# --- migrations ----------------------------------------------------------------------------------------


def load_migrations(dialect: str, package: str = MIGRATIONS_PACKAGE) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration for `dialect`, in order.

    A migration is `NNNN_name.sql` (portable: both databases run it) or, when the two need different
    text, `NNNN_name.<dialect>.sql` beside it, which that dialect runs instead. A portable file uses the
    common types (BIGINT, DOUBLE PRECISION, TEXT) so that both get the same columns.
    """
    found: dict[int, tuple[int, str, str]] = {}
    overridden: dict[int, bool] = {}
    dialects = ("sqlite", "postgres")
    for entry in resources.files(package).iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        stem = name.removesuffix(".sql")
        variant = stem.rsplit(".", 1)[1] if "." in stem else None
        if variant is not None and variant not in dialects:
            raise RuntimeError(f"migration {name}: unknown dialect {variant!r}")
        if variant not in (None, dialect):
            continue
        version = int(name.split("_", 1)[0])
        specific = variant is not None
        if version in found and overridden[version] == specific:
            raise RuntimeError(f"two migrations share version {version}: {found[version][1]} and {name}")
        if version in found and overridden[version]:
            continue  # the dialect's own file wins over the portable one
        found[version] = (version, name, entry.read_text(encoding="utf-8"))
        overridden[version] = specific
    chosen = [found[version] for version in sorted(found)]
    if dialect == "postgres":
        for _, name, text in chosen:
            if not overridden[int(name.split("_", 1)[0])] and _FLOAT4.search(_strip_comments(text)):
                raise RuntimeError(
                    f"portable migration {name} uses REAL, which PostgreSQL stores in 4 bytes (epoch seconds"
                    " would lose minutes): write DOUBLE PRECISION, or add a .postgres.sql version"
                )
    return chosen


_FLOAT4 = re.compile(r"\bREAL\b", re.IGNORECASE)


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines())


async def apply_migrations(
    tx: Tx, dialect: str, run_script: Callable[[str], Awaitable[None]], *, now: float
) -> list[str]:
    """Apply, inside the caller's transaction, every migration newer than the recorded version.

    The caller holds the lock that makes a second process wait (SQLite: BEGIN IMMEDIATE; PostgreSQL:
    an advisory lock), so the second finds the work done. Returns the names applied.
    """
    migrations = load_migrations(dialect)
    await tx.fetch(sql.SCHEMA_VERSION_TABLE, {})
    current = (await tx.fetch(sql.SCHEMA_VERSION, {}))[0][0]
    if migrations and current > migrations[-1][0]:
        log.warning("database schema %s is newer than this code knows (%s)", current, migrations[-1][0])
    pending = [m for m in migrations if m[0] > current]
    for version, name, script in pending:
        await run_script(script)
        await tx.fetch(sql.RECORD_VERSION, {"version": version, "name": name, "now": now})
    if pending:
        log.info("applied migrations %s", ", ".join(name for _, name, _ in pending))
    return [name for _, name, _ in pending]


# --- rows -> records -----------------------------------------------------------------------------------


def dump(value: Any) -> str:
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


def job_from_row(row: Row) -> JobRecord:
    values = {name: row[name] for name in _JOB_FIELDS}
    values["params"] = json.loads(values["params"])
    values["options"] = json.loads(values["options"])
    values["status"] = JobStatus(values["status"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    values["spoiler"] = bool(values["spoiler"])
    return JobRecord(**values)


def _entry_from_row(row: Row) -> LedgerEntry:
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


def _policy_from_row(guild_id: int, row: Row) -> GuildPolicy:
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


def _guild_ops_from_row(guild_id: int, row: Row | None) -> GuildOps:
    if row is None:
        return GuildOps(guild_id=guild_id)
    return GuildOps(
        guild_id=guild_id,
        cap=_allowance(row["cap_amount"], row["cap_period"]),
        approved=bool(row["approved"]),
        log_channel_id=row["log_channel_id"],
    )


def _audit_from_row(row: Row) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        guild_id=row["guild_id"],
        actor_id=row["actor_id"],
        action=row["action"],
        detail=json.loads(row["detail"]),
        created_at=row["created_at"],
    )


def _style_from_row(row: Row) -> Style:
    return Style(
        guild_id=row["guild_id"],
        name=row["name"],
        template=row["template"],
        created_by=row["created_by"],
        created_at=row["created_at"],
    )


def _process_from_row(row: Row) -> ProcessRecord:
    shards = tuple(int(s) for s in row["shards"].split(",") if s)
    return ProcessRecord(
        process_id=row["process_id"],
        shards=shards,
        version=row["version"],
        started_at=row["started_at"],
        last_seen=row["last_seen"],
    )


# --- holds ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class HoldRequest:
    """One `create_job_with_hold`, ready for a dialect to commit: the statement, its values, the rules."""

    job: NewJob
    limits: HoldLimits
    sql: str
    values: dict[str, Any]
    figure_values: dict[str, Any]
    guards: frozenset[str]  # the names of the guards in `sql` (sql.Queries.guards)

    @property
    def lock_keys(self) -> list[tuple[str, bool]]:
        """The whole bot, then the server, then the member: exclusive where this hold checks a limit of
        that scope, shared otherwise.

        A hold that checks a limit must see every hold that could count against it; a hold that does not
        check it still adds to it, so it takes the same lock shared (holds without a check never wait
        for each other). The bot-wide caps sum every server's spend, so they need the bot-wide lock. One
        order for everyone: no deadlock.
        """
        job, guards, limits = self.job, self.guards, self.limits
        bot_wide = bool(guards & {"bot_day", "bot_month"})
        server = bool(guards & {"budget", "guild_cap"}) or ("queue" in guards and limits.max_guild_jobs is not None)
        member = "member" in guards or ("queue" in guards and limits.max_member_jobs is not None)
        return [
            ("bot", bot_wide),
            (f"guild:{job.guild_id}", server),
            (f"member:{job.guild_id}:{job.user_id}", member),
        ]

    @staticmethod
    def batch_lock_keys(requests: Sequence[HoldRequest]) -> list[tuple[str, bool]]:
        """The locks of several holds committed in one transaction, in the one global order: the bot, then
        the servers, then the members, each scope sorted by name; exclusive where any of them needs it.

        A single hold's keys (one per scope) are in this order too, so batches and single holds never
        wait for each other in a circle."""
        wanted: dict[str, tuple[int, bool]] = {}
        for request in requests:
            for scope, (name, exclusive) in enumerate(request.lock_keys):
                _, already = wanted.get(name, (scope, False))
                wanted[name] = (scope, already or exclusive)
        ordered = sorted(wanted.items(), key=lambda item: (item[1][0], item[0]))
        return [(name, exclusive) for name, (_, exclusive) in ordered]

    def record(self) -> JobRecord:
        job = self.job
        return JobRecord(
            **{name: getattr(job, name) for name in sql.NEW_JOB_FIELDS if name not in ("params", "options")},
            params=json.loads(self.values["params"]),
            options=json.loads(self.values["options"]),
            status=JobStatus.QUEUED,
            hold_amount=self.values["amount"],
            created_at=self.values["now"],
        )

    def refusal(self, figures: Row | None) -> Exception:
        """The error a refused hold raises, with the figures its member and server are at; a RuntimeError
        when no limit explains the refusal (the figures show room)."""
        amount = self.values["amount"]
        if figures is None:
            return RuntimeError(f"hold for job {self.values['id']}: no figures for a refused hold")
        limits, guards = self.limits, self.guards
        # The widest limit first: a member refused by the bot's cap is told so, not that they are short.
        if "approved" in guards and not figures["approved"]:
            return GuildNotApprovedError()
        daily, monthly, cap = limits.bot_daily_cap, limits.bot_monthly_cap, limits.guild_cap
        if "bot_day" in guards and daily is not None and figures["bot_day_spent"] + amount > daily:
            return BotDailyCapError()
        if "bot_month" in guards and monthly is not None and figures["bot_month_spent"] + amount > monthly:
            return BotMonthlyCapError()
        if "guild_cap" in guards and cap is not None and figures["cap_spent"] + amount > cap:
            return ServerCapReachedError(needed=amount, remaining=max(cap - figures["cap_spent"], 0))
        if limits.max_member_jobs is not None and figures["member_jobs"] >= limits.max_member_jobs:
            return TooManyJobsError(limit=limits.max_member_jobs)
        if limits.max_guild_jobs is not None and figures["guild_jobs"] >= limits.max_guild_jobs:
            return ServerQueueFullError(limit=limits.max_guild_jobs)
        available, spent = figures["available"], figures["spent"]
        if "member" in guards and available < amount:
            return InsufficientCreditsError(needed=amount, available=max(available, 0))
        budget = limits.budget
        if "budget" in guards and budget is not None and spent + amount > budget:
            return BudgetExhaustedError(needed=amount, remaining=max(budget - spent, 0))
        return RuntimeError(f"hold for job {self.values['id']} refused but no limit explains it")


class SqlStore(Store):
    """Every `Store` method, written once over the dialect primitives below."""

    queries: sql.Queries

    # --- dialect primitives ------------------------------------------------------------------------------

    @abstractmethod
    async def _read(self, statement: str, params: Mapping[str, Any]) -> list[Any]:
        """A plain read: committed data only, never the inside of another task's transaction."""

    @abstractmethod
    async def _single(self, statement: str, params: Mapping[str, Any]) -> list[Any]:
        """One write statement, atomic on its own, run to the end once started."""

    @abstractmethod
    async def _write(self, body: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `body` as one transaction to the end: COMMIT when it returns, ROLLBACK when it raises."""

    @abstractmethod
    async def _hold(self, request: HoldRequest) -> JobRecord:
        """Commit one guarded hold and its job row, or raise the request's refusal."""

    @abstractmethod
    async def _finish(self, values: dict[str, Any]) -> JobRecord | None:
        """Run FINISH_JOB with `values`; the updated job, or None when it was already terminal."""

    # --- small bot state ---------------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        rows = await self._read(sql.GET_META, {"key": key})
        return rows[0][0] if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        await self._single(sql.SET_META, {"key": key, "value": value})

    # --- credits -----------------------------------------------------------------------------------------

    async def create_job_with_hold(self, job: NewJob, limits: HoldLimits, *, now: float) -> JobRecord:
        if job.count < 1 or job.price < 0:
            raise ValueError(f"a job needs count >= 1 and price >= 0 (got {job.count}, {job.price})")
        amount = job.hold_amount
        # A free job needs no credits (but takes a place in the queue); otherwise guard only on the
        # limits that exist, so that a server without a budget never pays for summing its spend.
        paid = amount > 0
        guards = frozenset(
            name
            for name, on in (
                ("approved", limits.require_approval),
                ("bot_day", paid and limits.bot_daily_cap is not None),
                ("bot_month", paid and limits.bot_monthly_cap is not None),
                ("guild_cap", paid and limits.guild_cap is not None),
                ("queue", limits.max_member_jobs is not None or limits.max_guild_jobs is not None),
                ("member", paid and limits.allowance is not None),
                ("budget", paid and limits.budget is not None),
            )
            if on
        )
        values: dict[str, Any] = {name: getattr(job, name) for name in sql.NEW_JOB_FIELDS}
        values.update(
            params=dump(job.params),
            options=dump(job.options),
            spoiler=int(bool(job.spoiler)),
            amount=amount,
            now=now,
        )
        limit_values: dict[str, Any] = {
            "allowance": limits.allowance,
            "period_start": limits.period_start,
            "budget": limits.budget,
            "budget_start": limits.budget_period_start,
            "max_member_jobs": _NO_LIMIT if limits.max_member_jobs is None else limits.max_member_jobs,
            "max_guild_jobs": _NO_LIMIT if limits.max_guild_jobs is None else limits.max_guild_jobs,
            "guild_cap": limits.guild_cap,
            "cap_start": limits.guild_cap_start,
            "bot_daily_cap": limits.bot_daily_cap,
            "bot_day_start": limits.bot_day_start,
            "bot_monthly_cap": limits.bot_monthly_cap,
            "bot_month_start": limits.bot_month_start,
        }
        for prefix in ("period", "budget", "cap", "bot_day", "bot_month"):
            limit_values[f"{prefix}_bucket"] = sql.bucket_after(limit_values[f"{prefix}_start"])
        figure_names = ("id", "guild_id", "user_id", "amount")
        return await self._hold(
            HoldRequest(
                job=job,
                limits=limits,
                sql=self.queries.hold(sorted(guards, key=list(self.queries.guards).index)),
                values={**values, **limit_values},
                figure_values={
                    **{name: values[name] for name in figure_names},
                    **limit_values,
                    "allowance": limits.allowance or 0,
                },
                guards=guards,
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
        return await self._finish(values)

    async def member_totals(self, guild_id: int, user_id: int, period_start: float) -> MemberTotals:
        rows = await self._read(
            self.queries.member_totals,
            {
                "guild_id": guild_id,
                "user_id": user_id,
                "period_start": period_start,
                "period_bucket": sql.bucket_after(period_start),
            },
        )
        granted, captured, held = rows[0][0], rows[0][1], rows[0][2]
        return MemberTotals(granted=granted, captured=captured, held=held)

    async def server_spend(self, guild_id: int, period_start: float) -> int:
        rows = await self._read(
            f"SELECT {self.queries.server_spend}",
            {"guild_id": guild_id, "budget_start": period_start, "budget_bucket": sql.bucket_after(period_start)},
        )
        return int(rows[0][0])

    async def bot_spend(self, period_start: float) -> int:
        rows = await self._read(
            f"SELECT {self.queries.bot_spend}",
            {"bot_day_start": period_start, "bot_day_bucket": sql.bucket_after(period_start)},
        )
        return int(rows[0][0])

    async def spend_by_guild_and_model(self, start: float) -> list[SpendLine]:
        rows = await self._read(sql.SPEND_BY_GUILD_AND_MODEL, {"start": start})
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
        line = {
            "guild_id": guild_id,
            "user_id": user_id,
            "kind": kind.value,
            "amount": amount,
            "actor_id": actor_id,
            "reason": reason,
            "now": now,
        }

        async def body(tx: Tx) -> int:
            rows = await tx.fetch(sql.INSERT_ADJUSTMENT, line)
            entry_id = int(rows[0][0])
            detail = {"user_id": user_id, "kind": kind.value, "amount": amount, "reason": reason, "entry_id": entry_id}
            await self._audit(tx, guild_id, actor_id, f"ledger.{kind.value}", detail, now)
            return entry_id

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
        rows = await self._read(
            sql.LEDGER_ENTRIES, {"guild_id": guild_id, "start": start, "end": end, "user_id": user_id}
        )
        return [_entry_from_row(row) for row in rows]

    async def usage_by_model(self, guild_id: int, start: float, *, user_id: int | None = None) -> dict[str, int]:
        rows = await self._read(sql.USAGE_BY_MODEL, {"guild_id": guild_id, "start": start, "user_id": user_id})
        return {row[0]: int(row[1]) for row in rows}

    async def top_spenders(self, guild_id: int, start: float, limit: int) -> list[tuple[int, int]]:
        rows = await self._read(sql.TOP_SPENDERS, {"guild_id": guild_id, "start": start, "limit": limit})
        return [(int(row[0]), int(row[1])) for row in rows]

    # --- jobs --------------------------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobRecord | None:
        rows = await self._read(sql.GET_JOB, {"id": job_id})
        return job_from_row(rows[0]) if rows else None

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
                values[name] = dump(values[name])
        if "cancel_requested" in values:
            values["cancel_requested"] = int(bool(values["cancel_requested"]))
        allowed = [s.value for s in ACTIVE_STATUSES]
        if expect is not None:
            wanted = {JobStatus(s).value for s in expect}
            allowed = [s for s in allowed if s in wanted]
            if not allowed:
                return None
        assignments = ", ".join(f"{name} = :{name}" for name in values) or "id = id"
        statuses = {f"status_{n}": status for n, status in enumerate(allowed)}
        statement = (
            f"UPDATE jobs SET {assignments} WHERE id = :job_id"
            f" AND status IN ({', '.join(':' + name for name in statuses)}) RETURNING *"
        )
        rows = await self._single(statement, {**values, "job_id": job_id, **statuses})
        return job_from_row(rows[0]) if rows else None

    async def job_counts(self) -> dict[JobStatus, int]:
        rows = await self._read(sql.JOB_COUNTS, {})
        return {JobStatus(row[0]): int(row[1]) for row in rows}

    async def jobs_per_owner(self) -> dict[str, int]:
        rows = await self._read(sql.JOBS_PER_OWNER, {})
        return {row[0]: int(row[1]) for row in rows}

    async def active_jobs(self) -> list[JobRecord]:
        rows = await self._read(sql.ACTIVE_JOBS, {})
        return [job_from_row(row) for row in rows]

    async def recent_jobs(self, guild_id: int, user_id: int, limit: int) -> list[JobRecord]:
        rows = await self._read(sql.RECENT_JOBS, {"guild_id": guild_id, "user_id": user_id, "limit": limit})
        return [job_from_row(row) for row in rows]

    # --- job ownership, cancel flags, heartbeats ---------------------------------------------------------

    async def claim_jobs(
        self, owner: str, limits: RunLimits, *, lease_seconds: float, now: float, most: int = 100
    ) -> list[JobRecord]:
        values = {
            "owner": owner,
            "lease_until": now + lease_seconds,
            "per_member": limits.per_member,
            "per_guild": limits.per_guild,
            "global_limit": limits.global_limit,
            "most": most,
            "now": now,
        }

        async def body(tx: Tx) -> list[Any]:
            await tx.lock([("claims", True)])  # one claim at a time across processes: limits are exact
            return await tx.fetch(sql.CLAIM_JOBS, values)

        rows = await self._write(body)
        jobs = [job_from_row(row) for row in rows]
        return sorted(jobs, key=lambda job: job.created_at)

    async def renew_leases(self, owner: str, *, lease_seconds: float, now: float) -> set[str]:
        rows = await self._single(sql.RENEW_LEASES, {"owner": owner, "lease_until": now + lease_seconds})
        return {row[0] for row in rows}

    async def take_over_jobs(
        self, owner: str, *, lease_seconds: float, alive_seconds: float, now: float
    ) -> list[JobRecord]:
        values = {"owner": owner, "lease_until": now + lease_seconds, "now": now, "alive_since": now - alive_seconds}
        rows = await self._single(sql.TAKE_OVER_JOBS, values)
        return sorted((job_from_row(row) for row in rows), key=lambda job: job.created_at)

    async def release_job(self, job_id: str, owner: str) -> bool:
        return bool(await self._single(sql.RELEASE_JOB, {"id": job_id, "owner": owner}))

    async def mark_submitted(self, job_id: str, owner: str, *, now: float) -> bool:
        return bool(await self._single(sql.MARK_SUBMITTED, {"id": job_id, "owner": owner, "now": now}))

    async def request_cancel(self, job_id: str) -> bool:
        return bool(await self._single(sql.REQUEST_CANCEL, {"id": job_id}))

    async def cancel_requested(self, job_id: str) -> bool:
        rows = await self._read(sql.CANCEL_REQUESTED, {"id": job_id})
        return bool(rows and rows[0][0])

    async def cancels_requested(self, owner: str) -> set[str]:
        rows = await self._read(sql.CANCELS_REQUESTED, {"owner": owner})
        return {row[0] for row in rows}

    async def heartbeat(self, process_id: str, shards: Sequence[int], version: str, *, now: float) -> None:
        shard_text = ",".join(str(int(s)) for s in shards)
        await self._single(
            sql.HEARTBEAT, {"process_id": process_id, "shards": shard_text, "version": version, "now": now}
        )

    async def alive_processes(self, *, alive_seconds: float, now: float) -> list[ProcessRecord]:
        rows = await self._read(sql.ALIVE_PROCESSES, {"since": now - alive_seconds})
        return [_process_from_row(row) for row in rows]

    async def forget_process(self, process_id: str) -> None:
        await self._single(sql.FORGET_PROCESS, {"process_id": process_id})

    # --- adaptive polling history ------------------------------------------------------------------------

    async def record_duration(self, model: str, seconds: float, *, now: float) -> None:
        # Insert, then trim to the newest DURATIONS_KEPT_PER_MODEL: two single statements riding the group
        # commit, not a transaction of their own. A thousand jobs finishing together each record one, and
        # as transactions they queued one after the other on the write lock, every job's next store
        # write behind them (1.4 s from a job's last poll to its download, at the median of a burst).
        # Each statement is right on its own: a trim between another insert and its trim keeps the newest.
        await self._single(sql.INSERT_DURATION, {"model": model, "seconds": seconds, "now": now})
        await self._single(sql.TRIM_DURATIONS, {"model": model, "keep": DURATIONS_KEPT_PER_MODEL})

    async def recent_durations(self, model: str, limit: int) -> list[float]:
        rows = await self._read(sql.RECENT_DURATIONS, {"model": model, "limit": limit})
        return [float(row[0]) for row in rows]

    # --- server policy -----------------------------------------------------------------------------------

    async def get_policy(self, guild_id: int) -> GuildPolicy:
        rows = await self._read(self.queries.get_policy, {"guild_id": guild_id})
        return _policy_from_row(guild_id, rows[0])

    async def allowance_context(
        self, guild_id: int, user_id: int
    ) -> tuple[Allowance | None, dict[int, Allowance], GuildPolicy]:
        rows = await self._read(self.queries.allowance_context, {"guild_id": guild_id, "user_id": user_id})
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
        upsert = _upsert("guild_policy", ("guild_id",), columns)

        new_default = changes.get("default_model")

        async def body(tx: Tx) -> GuildPolicy:
            if new_default is not None:
                # Checked under the server's policy lock, which set_model_rule takes too: a rule denying
                # the model cannot land between this check and the write.
                await tx.lock([(f"policy:{guild_id}", True)])
                if not (await self._policy_in(tx, guild_id)).is_model_allowed(new_default):
                    raise ModelDisabledError(model=new_default)
            await tx.fetch(upsert, {"guild_id": guild_id, **columns})
            await self._audit(tx, guild_id, actor_id, "policy.update", detail, now)
            return await self._policy_in(tx, guild_id)

        return await self._write(body)

    async def _policy_in(self, tx: Tx, guild_id: int) -> GuildPolicy:
        """The policy as the transaction `tx` sees it (for checks that must not race)."""
        rows = await tx.fetch(self.queries.get_policy, {"guild_id": guild_id})
        return _policy_from_row(guild_id, rows[0])

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
        statement = sql.DELETE_MODEL_RULE if allowed is None else sql.UPSERT_MODEL_RULE
        args: dict[str, Any] = {"guild_id": guild_id, "model": model}
        if allowed is not None:
            args["allowed"] = int(allowed)
        detail = {"model": model, "allowed": allowed}

        async def body(tx: Tx) -> GuildPolicy:
            if allowed is False:
                await tx.lock([(f"policy:{guild_id}", True)])  # see update_policy
                current = await self._policy_in(tx, guild_id)
                if model == (current.default_model or fallback_default):
                    raise DefaultModelDisabledError(model=model)
            await tx.fetch(statement, args)
            await self._audit(tx, guild_id, actor_id, "policy.model_rule", detail, now)
            return await self._policy_in(tx, guild_id)

        return await self._write(body)

    async def role_allowances(self, guild_id: int) -> dict[int, Allowance]:
        rows = await self._read(sql.ROLE_ALLOWANCES, {"guild_id": guild_id})
        return {int(row[0]): Allowance(amount=row[1], period=row[2]) for row in rows}

    async def set_role_allowance(
        self, guild_id: int, role_id: int, allowance: Allowance | None, *, actor_id: int, now: float
    ) -> None:
        await self._set_allowance("role_allowances", "role_id", guild_id, role_id, allowance, actor_id, now)

    async def member_allowance(self, guild_id: int, user_id: int) -> Allowance | None:
        rows = await self._read(sql.MEMBER_ALLOWANCE, {"guild_id": guild_id, "user_id": user_id})
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
        args: dict[str, Any] = {"guild_id": guild_id, "target": target_id}
        if allowance is None:
            statement = f"DELETE FROM {table} WHERE guild_id = :guild_id AND {key} = :target"
        else:
            statement = (
                f"INSERT INTO {table} (guild_id, {key}, amount, period) VALUES (:guild_id, :target, :amount, :period)"
                f" ON CONFLICT (guild_id, {key}) DO UPDATE SET amount = excluded.amount, period = excluded.period"
            )
            args.update(amount=allowance.amount, period=allowance.period)
        action = "allowance.role" if key == "role_id" else "allowance.member"
        detail = {key: target_id, "allowance": _allowance_json(allowance)}

        async def body(tx: Tx) -> None:
            await tx.fetch(statement, args)
            await self._audit(tx, guild_id, actor_id, action, detail, now)

        await self._write(body)

    async def recent_audit(self, guild_id: int, limit: int) -> list[AuditEntry]:
        rows = await self._read(sql.RECENT_AUDIT, {"guild_id": guild_id, "limit": limit})
        return [_audit_from_row(row) for row in rows]

    async def audit_after(self, guild_id: int, after_id: int, limit: int) -> list[AuditEntry]:
        rows = await self._read(sql.AUDIT_AFTER, {"guild_id": guild_id, "after_id": after_id, "limit": limit})
        return [_audit_from_row(row) for row in rows]

    @staticmethod
    async def _audit(tx: Tx, guild_id: int, actor_id: int, action: str, detail: dict[str, Any], now: float) -> None:
        params = {"guild_id": guild_id, "actor_id": actor_id, "action": action, "detail": dump(detail), "now": now}
        await tx.fetch(sql.AUDIT, params)

    # --- moderation --------------------------------------------------------------------------------------

    async def blocked_terms(self, guild_id: int) -> list[BlockedTerm]:
        rows = await self._read(sql.BLOCKED_TERMS, {"guild_id": guild_id})
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
        rows = await self._read(sql.BLOCKLIST_VERSION, {"guild_id": guild_id})
        return int(rows[0][0]) if rows else 0

    async def add_blocked_term(
        self, guild_id: int, pattern: str, is_regex: bool, *, actor_id: int, now: float, max_terms: int | None = None
    ) -> BlockedTerm | None:
        values = {
            "guild_id": guild_id,
            "pattern": pattern,
            "is_regex": int(bool(is_regex)),
            "actor_id": actor_id,
            "max_terms": -1 if max_terms is None else max_terms,
            "now": now,
        }

        async def body(tx: Tx) -> int | None:
            if max_terms is not None:
                await tx.lock([(f"blocklist:{guild_id}", True)])  # the count and the insert, one at a time
            rows = await tx.fetch(sql.ADD_BLOCKED_TERM, values)
            if not rows:
                return None
            term_id = int(rows[0][0])
            detail = {"pattern": pattern, "is_regex": bool(is_regex), "term_id": term_id}
            await self._audit(tx, guild_id, actor_id, "blocked_term.add", detail, now)
            await tx.fetch(sql.BUMP_BLOCKLIST, {"guild_id": guild_id})
            return term_id

        term_id = await self._write(body)
        if term_id is None:
            return None
        return BlockedTerm(
            id=term_id, guild_id=guild_id, pattern=pattern, is_regex=bool(is_regex), created_by=actor_id, created_at=now
        )

    async def remove_blocked_term(self, guild_id: int, term_id: int, *, actor_id: int, now: float) -> bool:
        async def body(tx: Tx) -> bool:
            rows = await tx.fetch(sql.REMOVE_BLOCKED_TERM, {"guild_id": guild_id, "id": term_id})
            if not rows:
                return False
            detail = {"term_id": term_id, "pattern": rows[0][0], "is_regex": bool(rows[0][1])}
            await self._audit(tx, guild_id, actor_id, "blocked_term.remove", detail, now)
            await tx.fetch(sql.BUMP_BLOCKLIST, {"guild_id": guild_id})
            return True

        return await self._write(body)

    # --- the operator's seat -------------------------------------------------------------------------------

    async def get_guild_ops(self, guild_id: int) -> GuildOps:
        rows = await self._read(sql.GET_GUILD_OPS, {"guild_id": guild_id})
        return _guild_ops_from_row(guild_id, rows[0] if rows else None)

    async def all_guild_ops(self) -> list[GuildOps]:
        rows = await self._read(sql.ALL_GUILD_OPS, {})
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
        upsert = _upsert("guild_ops", ("guild_id",), columns)
        action = "server.log_channel" if set(changes) == {"log_channel_id"} else "operator.server"

        async def body(tx: Tx) -> GuildOps:
            await tx.fetch(upsert, {"guild_id": guild_id, **columns})
            await self._audit(tx, guild_id, actor_id, action, detail, now)
            rows = await tx.fetch(sql.GET_GUILD_OPS, {"guild_id": guild_id})
            return _guild_ops_from_row(guild_id, rows[0])

        return await self._write(body)

    async def claim_alert(self, key: str, *, now: float) -> bool:
        return bool(await self._single(sql.CLAIM_ALERT, {"key": key, "now": now}))

    # --- member preferences, server styles and channel rules ---------------------------------------------

    async def member_defaults(self, guild_id: int, user_id: int) -> dict[str, Any]:
        rows = await self._read(sql.MEMBER_DEFAULTS, {"guild_id": guild_id, "user_id": user_id})
        return dict(json.loads(rows[0]["defaults"])) if rows else {}

    async def set_member_defaults(
        self, guild_id: int, user_id: int, defaults: dict[str, Any] | None, *, now: float
    ) -> None:
        key = {"guild_id": guild_id, "user_id": user_id}
        if defaults:
            await self._single(sql.SET_MEMBER_DEFAULTS, {**key, "defaults": dump(defaults), "now": now})
        else:
            await self._single(sql.FORGET_MEMBER_DEFAULTS, key)

    async def styles(self, guild_id: int) -> list[Style]:
        rows = await self._read(sql.STYLES, {"guild_id": guild_id})
        return [_style_from_row(row) for row in rows]

    async def put_style(self, guild_id: int, name: str, template: str, *, actor_id: int, now: float) -> Style:
        values = {"guild_id": guild_id, "name": name, "template": template, "actor_id": actor_id, "now": now}

        async def body(tx: Tx) -> None:
            await tx.fetch(sql.PUT_STYLE, values)
            await self._audit(tx, guild_id, actor_id, "style.put", {"name": name, "template": template}, now)

        await self._write(body)
        return Style(guild_id=guild_id, name=name, template=template, created_by=actor_id, created_at=now)

    async def remove_style(self, guild_id: int, name: str, *, actor_id: int, now: float) -> bool:
        async def body(tx: Tx) -> bool:
            rows = await tx.fetch(sql.REMOVE_STYLE, {"guild_id": guild_id, "name": name})
            if not rows:
                return False
            await self._audit(tx, guild_id, actor_id, "style.remove", {"name": name, "template": rows[0][0]}, now)
            return True

        return await self._write(body)

    async def allowed_channels(self, guild_id: int) -> list[int]:
        rows = await self._read(sql.ALLOWED_CHANNELS, {"guild_id": guild_id})
        return [int(row[0]) for row in rows]

    async def set_channel_allowed(
        self, guild_id: int, channel_id: int, allowed: bool, *, actor_id: int, now: float
    ) -> bool:
        change = sql.ALLOW_CHANNEL if allowed else sql.DISALLOW_CHANNEL
        action = "channel.allow" if allowed else "channel.disallow"

        async def body(tx: Tx) -> bool:
            if not await tx.fetch(change, {"guild_id": guild_id, "channel_id": channel_id}):
                return False
            await self._audit(tx, guild_id, actor_id, action, {"channel_id": channel_id}, now)
            return True

        return await self._write(body)


def _upsert(table: str, keys: Sequence[str], columns: Mapping[str, Any]) -> str:
    """`INSERT … ON CONFLICT (keys) DO UPDATE` of `columns` (named parameters of the same names)."""
    names = ", ".join((*keys, *columns))
    marks = ", ".join(":" + name for name in (*keys, *columns))
    updates = ", ".join(f"{name} = excluded.{name}" for name in columns)
    return (
        f"INSERT INTO {table} ({names}) VALUES ({marks})"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    )

