"""The store interface. The ledger and the job code use only this; SQL lives only in implementations.

SQLite (`bot.store.sqlite`) is the embedded default; PostgreSQL (`bot.store.postgres`) serves several bot
processes on one database. Both are `bot.store.common.SqlStore`: one implementation of every method over
the SQL in `bot.store.sql`, with only connections, locking and commit batching per dialect. Every method
that moves credits is one atomic operation here, never a read in one call and a write in the next.

Times are epoch seconds (float, UTC). Every method is safe to call from many tasks at once.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from bot.store.records import (
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


class DuplicateJobError(ValueError):
    """`create_job_with_hold` was given a job id that already exists: nothing was held or written."""


class Store(ABC):
    """Persistence for jobs, the credit ledger, server policy, audit and small bot state."""

    # --- lifetime ----------------------------------------------------------------------------------------

    @abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations (all in one transaction)."""

    @abstractmethod
    async def close(self) -> None:
        """Close the connection; pending writes are committed or rolled back, never half-done."""

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- small bot state (command-sync hash, ...) --------------------------------------------------------

    @abstractmethod
    async def get_meta(self, key: str) -> str | None: ...

    @abstractmethod
    async def set_meta(self, key: str, value: str) -> None: ...

    # --- credits: holds tied to jobs ---------------------------------------------------------------------

    @abstractmethod
    async def create_job_with_hold(self, job: NewJob, limits: HoldLimits, *, now: float) -> JobRecord:
        """Insert `job` as QUEUED and hold `job.hold_amount` credits for it, atomically.

        In one transaction: the member's available credits (limits.allowance + granted − captured since
        limits.period_start − all active holds) must cover the hold, unless the allowance is unlimited;
        and the server's spend (captured since limits.budget_period_start + active holds) plus the hold
        must stay within limits.budget, when there is one; and the member's and the server's jobs
        queued or running (their held holds) must stay under limits.max_member_jobs and
        limits.max_guild_jobs. The operator's caps, when set, are guarded in the same statement: the whole
        bot's spend since limits.bot_day_start / bot_month_start plus the hold within bot_daily_cap /
        bot_monthly_cap; the server's spend since guild_cap_start within guild_cap; and with
        require_approval, the server must be approved (`set_guild_ops`). Raises, widest limit first,
        `GuildNotApprovedError`, `BotDailyCapError`, `BotMonthlyCapError`, `ServerCapReachedError(needed,
        remaining)`, `TooManyJobsError(limit)`, `ServerQueueFullError(limit)`, `InsufficientCreditsError(needed,
        available)` or `BudgetExhaustedError(needed, remaining)`, and writes nothing when any fails;
        `DuplicateJobError` for a job id already used. Concurrent calls, from any number of tasks or
        processes sharing the database, can never overspend nor overfill the queue.
        """

    @abstractmethod
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
        """Move a job to a terminal status and settle its hold, exactly once, in one transaction.

        DELIVERED captures `delivered_count × price` and releases the rest; FAILED and CANCELLED release
        it all. The interaction token is cleared (a secret kept no longer than the job). Returns the
        updated record, or None when the job was already terminal (a second call is a no-op: nothing is
        captured or released twice) or, with `expect`, not in that status: the compare-and-set of a
        cancel that must not settle a job the dispatcher has just claimed.
        """

    @abstractmethod
    async def member_totals(self, guild_id: int, user_id: int, period_start: float) -> MemberTotals:
        """A member's grants and captures since `period_start`, and all their active holds."""

    @abstractmethod
    async def server_spend(self, guild_id: int, period_start: float) -> int:
        """The server's captured credits since `period_start` plus its active holds."""

    @abstractmethod
    async def bot_spend(self, period_start: float) -> int:
        """Every server's captured credits since `period_start` plus all active holds (the operator's caps)."""

    @abstractmethod
    async def spend_by_guild_and_model(self, start: float) -> list[SpendLine]:
        """Captured credits since `start` per (server, model), largest first (the operator's report)."""

    @abstractmethod
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
        """Record an admin's GRANT or DEDUCT (and its audit entry) in one transaction."""

    @abstractmethod
    async def ledger_entries(
        self, guild_id: int, start: float, end: float, *, user_id: int | None = None
    ) -> list[LedgerEntry]:
        """Ledger lines of a server (or one member) with start <= created_at < end, oldest first."""

    @abstractmethod
    async def usage_by_model(self, guild_id: int, start: float, *, user_id: int | None = None) -> dict[str, int]:
        """Captured credits since `start` per model."""

    @abstractmethod
    async def top_spenders(self, guild_id: int, start: float, limit: int) -> list[tuple[int, int]]:
        """(user_id, captured credits) since `start`, largest first."""

    # --- jobs --------------------------------------------------------------------------------------------

    @abstractmethod
    async def get_job(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    async def update_job(
        self, job_id: str, *, expect: Sequence[JobStatus] | None = None, **fields: Any
    ) -> JobRecord | None:
        """Set `fields` on a non-terminal job, only if its status is in `expect` (when given).

        Returns the updated record, or None when the job is missing, terminal or not in `expect`. This is
        the compare-and-set that keeps two runners (or a runner and a cancel) from both acting on a job.
        Terminal statuses go through `finish_job`, never here.
        """

    @abstractmethod
    async def active_jobs(self) -> list[JobRecord]:
        """Every job not yet terminal, oldest first (recovery and the scheduler read this)."""

    @abstractmethod
    async def recent_jobs(self, guild_id: int, user_id: int, limit: int) -> list[JobRecord]:
        """A member's latest jobs in a server, newest first."""

    # --- job ownership by lease (several processes on one database) -------------------------------------
    #
    # A process claims a queued job by becoming its owner with a lease (an expiry time) that it renews
    # while the job runs. A process that dies stops renewing; once the lease has passed and its heartbeat
    # is stale, another process takes the job over and resumes it as recovery does. Cancel is a flag any
    # process sets and the owner reads at each step; the job is settled once, by `finish_job`.

    @abstractmethod
    async def claim_jobs(
        self, owner: str, limits: RunLimits, *, lease_seconds: float, now: float, most: int = 100
    ) -> list[JobRecord]:
        """Claim up to `most` QUEUED unowned acknowledged jobs for `owner`, leased until now + lease_seconds
        (their `started_at` is set to `now`). A claimed job is SUBMITTING with `submitted_at` None: claimed,
        not submitted yet, until `mark_submitted`.

        One atomic step across every process: jobs already owned (not terminal) count against
        limits.per_member, per_guild and global_limit, and the claim never exceeds them. Members take
        turns: every member's oldest queued job comes before anyone's second, and within a round the
        member whose last job started longest ago goes first. A job without its reply message yet is
        not claimable. Returns the claimed jobs,
        oldest first.
        """

    @abstractmethod
    async def renew_leases(self, owner: str, *, lease_seconds: float, now: float) -> set[str]:
        """Extend the lease of every active job `owner` holds; the ids it still owns (a job missing from
        the answer was taken over or finished, and the owner must stop acting on it)."""

    @abstractmethod
    async def take_over_jobs(
        self, owner: str, *, lease_seconds: float, alive_seconds: float, now: float
    ) -> list[JobRecord]:
        """Take ownership of active jobs whose lease expired and whose owner has sent no heartbeat for
        `alive_seconds`, and started jobs nobody owns (given back on shutdown, or from a run before
        leases). A job whose owner is alive is never taken. Each job goes to one taker only."""

    @abstractmethod
    async def release_job(self, job_id: str, owner: str) -> bool:
        """Give back an unfinished job `owner` holds (say, on shutdown), so another process may claim it.
        One claimed but not submitted yet goes back in line (QUEUED); any other is left for a taker."""

    @abstractmethod
    async def mark_submitted(self, job_id: str, owner: str, *, now: float) -> bool:
        """Record, just before its POST, that a claimed job's request may reach the gateway from now on
        (`submitted_at`). False, and nothing written, when `owner` no longer holds it, it is not a claimed
        unsubmitted job any more, or a cancel was requested: then the POST must not be sent."""

    @abstractmethod
    async def request_cancel(self, job_id: str) -> bool:
        """Set the cancel-requested flag of an active job (from any process); False if it is finished."""

    @abstractmethod
    async def cancel_requested(self, job_id: str) -> bool:
        """Whether a cancel was requested for the job: the owner reads this at each step."""

    @abstractmethod
    async def cancels_requested(self, owner: str) -> set[str]:
        """The active jobs `owner` holds whose cancel was requested (read at each lease renewal)."""

    @abstractmethod
    async def heartbeat(self, process_id: str, shards: Sequence[int], version: str, *, now: float) -> None:
        """Record that `process_id` (running `shards`, at `version`) is alive at `now`."""

    @abstractmethod
    async def alive_processes(self, *, alive_seconds: float, now: float) -> list[ProcessRecord]:
        """Processes with a heartbeat in the last `alive_seconds`, oldest started first."""

    @abstractmethod
    async def forget_process(self, process_id: str) -> None:
        """Remove a process's heartbeat (a clean shutdown)."""

    # --- adaptive polling history ------------------------------------------------------------------------

    @abstractmethod
    async def record_duration(self, model: str, seconds: float, *, now: float) -> None:
        """Remember how long an async job of `model` took from submit to completion."""

    @abstractmethod
    async def recent_durations(self, model: str, limit: int) -> list[float]:
        """The latest recorded durations of `model`, newest first."""

    # --- server policy -----------------------------------------------------------------------------------

    @abstractmethod
    async def get_policy(self, guild_id: int) -> GuildPolicy:
        """A server's policy; defaults when it never set anything."""

    @abstractmethod
    async def update_policy(self, guild_id: int, *, actor_id: int, now: float, **changes: Any) -> GuildPolicy:
        """Change fields of a server's `GuildPolicy` and write an audit entry, in one transaction.

        `changes` are GuildPolicy field names (timezone, default_allowance, budget, default_model,
        quote_threshold, models_allowed_by_default); `model_rules` changes go through `set_model_rule`.
        A new `default_model` must be allowed on the server, checked in the same transaction (else
        `ModelDisabledError`, nothing written), so that a concurrent `set_model_rule` cannot leave the
        default disabled.
        """

    @abstractmethod
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
        """Allow or deny one model on a server (None removes the rule), audited.

        A model that the server's default model (or `fallback_default` when it has none) names cannot be
        denied: `DefaultModelDisabledError`, nothing written, checked in the same transaction as the write.
        """

    @abstractmethod
    async def role_allowances(self, guild_id: int) -> dict[int, Allowance]:
        """Per-role allowances of a server."""

    @abstractmethod
    async def set_role_allowance(
        self, guild_id: int, role_id: int, allowance: Allowance | None, *, actor_id: int, now: float
    ) -> None:
        """Set (or with None, remove) a role's allowance, audited."""

    @abstractmethod
    async def member_allowance(self, guild_id: int, user_id: int) -> Allowance | None:
        """A member's personal override, if any."""

    @abstractmethod
    async def set_member_allowance(
        self, guild_id: int, user_id: int, allowance: Allowance | None, *, actor_id: int, now: float
    ) -> None:
        """Set (or with None, remove) a member's override, audited."""

    async def allowance_context(
        self, guild_id: int, user_id: int
    ) -> tuple[Allowance | None, dict[int, Allowance], GuildPolicy]:
        """The member's override, the server's role allowances and its policy, read together.

        The ledger needs all three for every hold and balance; a store may answer in one round trip.
        """
        override, by_role, policy = await asyncio.gather(
            self.member_allowance(guild_id, user_id), self.role_allowances(guild_id), self.get_policy(guild_id)
        )
        return override, by_role, policy

    @abstractmethod
    async def recent_audit(self, guild_id: int, limit: int) -> list[AuditEntry]:
        """A server's latest admin changes, newest first."""

    # --- moderation --------------------------------------------------------------------------------------

    @abstractmethod
    async def blocked_terms(self, guild_id: int) -> list[BlockedTerm]: ...

    @abstractmethod
    async def blocklist_version(self, guild_id: int) -> int:
        """A number that changes whenever the server's blocked terms change (0 before the first change)."""

    @abstractmethod
    async def add_blocked_term(
        self, guild_id: int, pattern: str, is_regex: bool, *, actor_id: int, now: float, max_terms: int | None = None
    ) -> BlockedTerm | None:
        """Add and audit a term; None, with nothing written, when the server already has `max_terms`."""

    @abstractmethod
    async def remove_blocked_term(self, guild_id: int, term_id: int, *, actor_id: int, now: float) -> bool: ...

    # --- the operator's seat -------------------------------------------------------------------------------

    @abstractmethod
    async def get_guild_ops(self, guild_id: int) -> GuildOps:
        """What the operator set for a server (cap, approval) and its log channel; defaults when never set."""

    @abstractmethod
    async def all_guild_ops(self) -> list[GuildOps]:
        """Every server with operator settings or a log channel, by id."""

    @abstractmethod
    async def set_guild_ops(self, guild_id: int, *, actor_id: int, now: float, **changes: Any) -> GuildOps:
        """Change `cap` (an Allowance with an amount, or None), `approved` or `log_channel_id`, audited, in
        one transaction."""

    @abstractmethod
    async def claim_alert(self, key: str, *, now: float) -> bool:
        """Record that the alert `key` is being sent: True for the first caller ever, False after. One
        atomic insert, so two tasks or processes never both send it."""

    @abstractmethod
    async def audit_after(self, guild_id: int, after_id: int, limit: int) -> list[AuditEntry]:
        """A server's admin changes with id > `after_id`, oldest first (forwarded to its log channel)."""

    @abstractmethod
    async def job_counts(self) -> dict[JobStatus, int]:
        """How many jobs are in each non-terminal status, across every process (the operator's fleet view)."""
    # --- member preferences, server styles and channel rules (issue 13) ----------------------------------

    @abstractmethod
    async def jobs_per_owner(self) -> dict[str, int]:
        """How many unfinished jobs each process owns (claimed, running or being resumed)."""

    @abstractmethod
    async def member_defaults(self, guild_id: int, user_id: int) -> dict[str, Any]:
        """A member's saved /imagine defaults on a server (model, aspect_ratio, count, options); {} if none."""

    @abstractmethod
    async def set_member_defaults(
        self, guild_id: int, user_id: int, defaults: dict[str, Any] | None, *, now: float
    ) -> None:
        """Replace a member's saved defaults; None or {} forgets them."""

    @abstractmethod
    async def styles(self, guild_id: int) -> list[Style]:
        """A server's styles, by name."""

    @abstractmethod
    async def put_style(self, guild_id: int, name: str, template: str, *, actor_id: int, now: float) -> Style:
        """Add a style, or replace the template of the style of that name, audited."""

    @abstractmethod
    async def remove_style(self, guild_id: int, name: str, *, actor_id: int, now: float) -> bool:
        """Remove a style, audited; False when there was none of that name."""

    @abstractmethod
    async def allowed_channels(self, guild_id: int) -> list[int]:
        """The channels where /imagine works on a server; empty means every channel."""

    @abstractmethod
    async def set_channel_allowed(
        self, guild_id: int, channel_id: int, allowed: bool, *, actor_id: int, now: float
    ) -> bool:
        """Add (allowed) or remove a channel from the server's list, audited; False when nothing changed."""
