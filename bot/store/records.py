"""Plain records the store reads and writes. No `discord` here: ids are ints, times are epoch seconds."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

Period = Literal["day", "week", "month", "unlimited"]


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
    charged: int = 0
    cancel_requested: bool = False
    created_at: float = 0.0
    started_at: float | None = None
    submitted_at: float | None = None
    completed_at: float | None = None  # the gateway reported the images ready
    finished_at: float | None = None
    owner: str | None = None  # the process running the job (None: queued and unclaimed)
    lease_expires_at: float | None = None  # the owner renews this; past it, another process may take over

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

    The store checks both inside the same transaction that inserts the hold.
    """

    allowance: int | None  # the member's allowance this period; None = unlimited
    period_start: float  # epoch seconds; grants and captures since then count
    budget: int | None = None  # the server's cap this budget period; None = no cap
    budget_period_start: float = 0.0


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

    def is_model_allowed(self, model: str) -> bool:
        return self.model_rules.get(model, self.models_allowed_by_default)


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
