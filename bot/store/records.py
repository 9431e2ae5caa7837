"""Plain records the store reads and writes. No `discord` here: ids are ints, times are epoch seconds."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

Period = Literal["day", "week", "month", "unlimited"]
SpoilerMode = Literal["off", "all", "outside_nsfw"]  # results posted as spoilers: on request, always, outside NSFW


class JobStatus(StrEnum):
    """A job's life. Terminal states are DELIVERED, FAILED and CANCELLED."""

    QUEUED = "queued"  # credits held, waiting for a run slot
    SUBMITTING = "submitting"  # the POST is on its way; a sync job waits here for its images
    POLLING = "polling"  # an async job has an operation id and is being polled
    DELIVERING = "delivering"  # images are in hand and being posted to Discord
    DELIVERED = "delivered"  # posted; the hold is captured for the images delivered
    FAILED = "failed"  # the hold is released
    CANCELLED = "cancelled"  # the hold is released

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.DELIVERED, JobStatus.FAILED, JobStatus.CANCELLED)


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.SUBMITTING, JobStatus.POLLING, JobStatus.DELIVERING)
RUNNING_STATUSES = (JobStatus.SUBMITTING, JobStatus.POLLING, JobStatus.DELIVERING)


class EntryKind(StrEnum):
    """Kinds of ledger entries. Amounts are always positive; the kind gives the sign."""

    HOLD = "hold"  # credits reserved for a job
    CAPTURE = "capture"  # part of a hold spent on delivered images
    RELEASE = "release"  # the rest of a hold given back
    GRANT = "grant"  # an admin's one-off addition to this period
    DEDUCT = "deduct"  # an admin's one-off removal from this period


@dataclass(frozen=True)
class Allowance:
    """Credits per period. The period "unlimited" (or `amount=None`) means no cap at all."""

    amount: int | None
    period: Period

    @property
    def unlimited(self) -> bool:
        return self.amount is None or self.period == "unlimited"


@dataclass(frozen=True)
class NewJob:
    """What the bot knows about a job when it is created (before credits are held)."""

    id: str
    guild_id: int
    channel_id: int
    user_id: int
    model: str
    prompt: str
    count: int
    price: int  # per image, at the time of the request
    params: dict[str, Any]  # exactly what is sent to the gateway besides model and prompt
    options: dict[str, str]  # the member's choices, for display and re-rolls
    mode: Literal["sync", "async"]
    locale: str = "en"
    application_id: int | None = None
    interaction_token: str | None = None
    token_expires_at: float | None = None
    reply_message_id: int | None = None
    upload_limit: int | None = None  # the interaction's attachment size limit, in bytes
    style: str | None = None  # the server style (by name) whose template wrapped the member's prompt
    remix_of: str | None = None  # the job this one was remixed from
    spoiler: bool = False  # post the images as spoilers
    request_id: int | None = None  # the asking interaction's snowflake: the queue's order (None: by creation)

    @property
    def hold_amount(self) -> int:
        return self.price * self.count


@dataclass
class JobRecord:
    """A job as stored. Every field a restart needs to finish the job is here."""

    id: str
    guild_id: int
    channel_id: int
    user_id: int
    model: str
    prompt: str
    count: int
    price: int
    params: dict[str, Any]
    options: dict[str, str]
    mode: Literal["sync", "async"]
    status: JobStatus
    hold_amount: int
    locale: str = "en"
    application_id: int | None = None
    interaction_token: str | None = None
    token_expires_at: float | None = None
    reply_message_id: int | None = None
    upload_limit: int | None = None
    operation_id: str | None = None
    error_key: str | None = None
    error_detail: str | None = None
    delivered_count: int = 0
    posted_count: int = 0  # images posted so far (written after each message), for recovery
    charged: int = 0
    cancel_requested: bool = False
    created_at: float = 0.0
    started_at: float | None = None
    submitted_at: float | None = None
    completed_at: float | None = None  # the gateway reported the images ready
    finished_at: float | None = None
    owner: str | None = None  # the process running the job (None: queued and unclaimed)
    lease_expires_at: float | None = None  # the owner renews this; past it, another process may take over
    style: str | None = None
    remix_of: str | None = None
    spoiler: bool = False
    request_id: int | None = None  # the asking interaction's snowflake: the queue's order

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


@dataclass(frozen=True)
class LedgerEntry:
    """One line of the append-only ledger."""

    id: int
    guild_id: int
    user_id: int
    kind: EntryKind
    amount: int
    created_at: float
    job_id: str | None = None
    actor_id: int | None = None  # who made the change (the member for holds, the admin for grants)
    reason: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class MemberTotals:
    """A member's sums, from which the ledger computes what is available."""

    granted: int  # grants minus deductions in the period (may be negative)
    captured: int  # captured in the period
    held: int  # active holds, whatever period they started in


@dataclass(frozen=True)
class HoldLimits:
    """What a new hold must fit under, computed by the ledger from policy and the clock.

    The store checks them all inside the same transaction that inserts the hold.
    """

    allowance: int | None  # the member's allowance this period; None = unlimited
    period_start: float  # epoch seconds; grants and captures since then count
    budget: int | None = None  # the server's cap this budget period; None = no cap
    budget_period_start: float = 0.0
    max_member_jobs: int | None = None  # the member's jobs queued or running (this one excluded); None = any
    max_guild_jobs: int | None = None  # the server's jobs queued or running; None = any
    # The operator's caps (bot.ops.caps), checked in the same statement: the whole bot per UTC day and
    # month, the server's cap set by the operator, and whether the server must be approved.
    bot_daily_cap: int | None = None
    bot_day_start: float = 0.0
    bot_monthly_cap: int | None = None
    bot_month_start: float = 0.0
    guild_cap: int | None = None
    guild_cap_start: float = 0.0
    require_approval: bool = False


@dataclass
class GuildPolicy:
    """A server's settings. A server that never changed anything gets the defaults."""

    guild_id: int
    timezone: str = "UTC"
    default_allowance: Allowance | None = None  # None: the bot-wide default from settings
    budget: Allowance | None = None  # None: no server budget
    default_model: str | None = None
    quote_threshold: int | None = None  # None: the bot-wide default from settings
    model_rules: dict[str, bool] = field(default_factory=dict)  # model -> allowed
    models_allowed_by_default: bool = True
    language: str = "auto"  # what the bot posts on its own here: "auto" (Discord's preferred locale) or a code
    spoiler_mode: SpoilerMode = "off"

    def is_model_allowed(self, model: str) -> bool:
        return self.model_rules.get(model, self.models_allowed_by_default)


@dataclass(frozen=True)
class GuildOps:
    """What the operator set for one server, and the server's log channel. Defaults when never set."""

    guild_id: int
    cap: Allowance | None = None  # the operator's cap for this server; None: the settings' default
    approved: bool = False  # for GUILD_ACCESS=allowlist
    log_channel_id: int | None = None  # where the server's budget and audit notices go


@dataclass(frozen=True)
class SpendLine:
    """Captured credits of one (server, model) pair since a period start, for the operator's report."""

    guild_id: int
    model: str
    captured: int


@dataclass(frozen=True)
class AuditEntry:
    id: int
    guild_id: int
    actor_id: int
    action: str
    detail: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class BlockedTerm:
    id: int
    guild_id: int
    pattern: str
    is_regex: bool
    created_by: int
    created_at: float


@dataclass(frozen=True)
class RunLimits:
    """How many claimed (running) jobs may exist at once, across every process."""

    per_member: int
    per_guild: int
    global_limit: int


@dataclass(frozen=True)
class ProcessRecord:
    """One bot process as its heartbeat last recorded it."""

    process_id: str
    shards: tuple[int, ...]
    version: str
    started_at: float
    last_seen: float


@dataclass(frozen=True)
class Style:
    """A server's named prompt template; `template` contains `{prompt}` where the member's text goes."""

    guild_id: int
    name: str
    template: str
    created_by: int
    created_at: float
