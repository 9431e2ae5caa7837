"""Credits: allowances, holds, captures and releases, grants and deductions, server budgets.

Pure logic over the `Store`: this module decides *which* limits apply; the store enforces them in the same
transaction that writes the hold, so that concurrent requests can never overspend.

The rules, as a member would have them explained:

* **Allowance.** Each member has an allowance of credits per period (day, week or month), or is
  unlimited. It comes from, in order: the member's personal override; else the most generous allowance of
  the member's roles (unlimited beats any amount; amounts in different periods are compared by their rate
  per day, so 100/day beats 2,000/month); else the server's default; else the bot's default (settings).
* **Periods.** A day starts at local midnight, a week on Monday at local midnight, a month on the 1st at
  local midnight. "Local" is the server's time zone (`GuildPolicy.timezone`), UTC unless the server set
  one; an unknown zone counts as UTC. Daylight-saving changes are honoured (a day may last 23 or 25 hours).
* **Available** = allowance for the current period + grants − deductions made in the period − credits
  captured in the period − credits held right now. Unused allowance does not roll over. A grant or a
  deduction counts in the period in which it was made, and only there.
* **Holds.** Starting a job holds its full price (price × images). The hold is refused, and nothing is
  written, when it would take the member's available credits below zero or the server's spend above its
  budget. A hold belongs to one job and is settled exactly once: DELIVERED captures price × images
  delivered and releases the rest; FAILED and CANCELLED release it all.
* **Captures count when they happen.** A job started just before a reset and delivered just after is
  charged to the new period, and its hold counts against the new period while it is open.
* **When available can be negative.** A hold never makes available negative. It can still drop below zero
  after the fact, and only in these ways: an admin deducts more than is left; an admin lowers the
  allowance; or a period resets while holds made in the old period (perhaps funded by a grant of that
  period) are still open. Then no new paid job starts until the balance is back above its price.
  `Balance.available` reports the true (possibly negative) figure; the refusal message shows 0.
* **Budget.** A server may cap its members' total spend per period: captured in the budget period plus
  everything held right now. Without a budget, `budget_status` reports the spend of the current month.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.config import Settings
from bot.errors import InvalidAmountError
from bot.store.base import Store
from bot.store.records import (
    Allowance,
    EntryKind,
    GuildPolicy,
    HoldLimits,
    JobRecord,
    JobStatus,
    LedgerEntry,
    NewJob,
    Period,
)

if TYPE_CHECKING:
    from bot.ops.caps import CapsPolicy

log = logging.getLogger(__name__)

MAX_ADJUSTMENT = 1_000_000
UTC = ZoneInfo("UTC")

# Rough length of a period in days, only to rank allowances (and the operator's caps) of different periods.
PERIOD_DAYS = {"day": 1.0, "week": 7.0, "month": 30.4375}


@dataclass(frozen=True)
class Balance:
    """A member's credits right now."""

    allowance: Allowance
    granted: int  # grants minus deductions in the period (may be negative)
    captured: int  # spent in the period
    held: int  # reserved by jobs in progress
    available: int | None  # None = unlimited; may be negative (see the module docstring)
    period_start: float
    resets_at: float | None  # None: the period never resets


@dataclass(frozen=True)
class BudgetStatus:
    """A server's spend against its budget."""

    budget: Allowance | None  # None: no budget
    spent: int  # captured in the budget period plus everything held now
    remaining: int | None  # None: no cap; never negative
    resets_at: float | None


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        log.debug("unknown time zone %r, using UTC", tz)
        return UTC


def _local_midnight(day: date, zone: ZoneInfo) -> float:
    # fold=0: on a day whose midnight is skipped by DST this is the first instant of the day; on a day
    # whose midnight happens twice, the first of them.
    return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


def period_bounds(period: Period, now: float, tz: str = "UTC") -> tuple[float, float | None]:
    """(start, next reset) in epoch seconds of the `period` that contains `now`, in time zone `tz`.

    day: local midnight; week: Monday local midnight; month: the 1st at local midnight; unlimited:
    (0.0, None). An unknown `tz` counts as UTC.
    """
    if period == "unlimited":
        return 0.0, None
    zone = _zone(tz)
    today = datetime.fromtimestamp(now, zone).date()
    if period == "day":
        start, end = today, today + timedelta(days=1)
    elif period == "week":
        start = today - timedelta(days=today.weekday())
        end = start + timedelta(days=7)
    elif period == "month":
        start = today.replace(day=1)
        end = date(start.year + 1, 1, 1) if start.month == 12 else date(start.year, start.month + 1, 1)
    else:
        raise ValueError(f"unknown period {period!r}")
    return _local_midnight(start, zone), _local_midnight(end, zone)


def _rank(allowance: Allowance) -> tuple[int, float]:
    if allowance.unlimited:
        return (1, 0.0)
    assert allowance.amount is not None
    return (0, allowance.amount / PERIOD_DAYS[allowance.period])


def _check_amount(amount: object) -> int:
    if isinstance(amount, bool):
        raise InvalidAmountError(value=amount, limit=MAX_ADJUSTMENT)
    if isinstance(amount, float) and amount.is_integer():
        amount = int(amount)
    if not isinstance(amount, int) or not 1 <= amount <= MAX_ADJUSTMENT:
        raise InvalidAmountError(value=amount, limit=MAX_ADJUSTMENT)
    return amount


class Ledger:
    """Credit decisions for members and servers, enforced by the store."""

    def __init__(
        self,
        store: Store,
        *,
        default_allowance: Allowance,
        max_queued_per_member: int | None = None,
        max_queued_per_guild: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.caps: CapsPolicy | None = None  # the operator's caps (bot.ops), added to every hold when set
        self._store = store
        self._default_allowance = default_allowance
        self._max_queued_per_member = max_queued_per_member
        self._max_queued_per_guild = max_queued_per_guild
        self._clock = clock

    @classmethod
    def from_settings(cls, store: Store, settings: Settings, *, clock: Callable[[], float] = time.time) -> Ledger:
        default = Allowance(amount=settings.default_allowance, period=settings.default_allowance_period)
        return cls(
            store,
            default_allowance=default,
            max_queued_per_member=settings.max_queued_per_member,
            max_queued_per_guild=settings.max_queued_per_guild,
            clock=clock,
        )

    @property
    def default_allowance(self) -> Allowance:
        return self._default_allowance

    async def allowance_for(self, guild_id: int, user_id: int, role_ids: Sequence[int]) -> Allowance:
        """Member override > most generous role allowance > server default > bot default."""
        allowance, _ = await self._allowance_and_policy(guild_id, user_id, role_ids)
        return allowance

    async def _allowance_and_policy(
        self, guild_id: int, user_id: int, role_ids: Sequence[int]
    ) -> tuple[Allowance, GuildPolicy]:
        override, by_role, policy = await self._store.allowance_context(guild_id, user_id)
        return self._resolve(override, by_role, policy.default_allowance, role_ids), policy

    def _resolve(
        self,
        override: Allowance | None,
        by_role: dict[int, Allowance],
        server_default: Allowance | None,
        role_ids: Sequence[int],
    ) -> Allowance:
        if override is not None:
            return override
        candidates = [by_role[role] for role in role_ids if role in by_role]
        if candidates:
            return max(candidates, key=_rank)
        return server_default if server_default is not None else self._default_allowance

    async def hold_for_job(self, job: NewJob, role_ids: Sequence[int]) -> JobRecord:
        """Store `job` and hold its price, or raise InsufficientCreditsError / BudgetExhaustedError /
        TooManyJobsError / ServerQueueFullError (then nothing is written)."""
        allowance, policy = await self._allowance_and_policy(job.guild_id, job.user_id, role_ids)
        now = self._clock()
        period_start, _ = period_bounds(allowance.period, now, policy.timezone)
        budget, budget_start = None, 0.0
        if policy.budget is not None and not policy.budget.unlimited:
            budget = policy.budget.amount
            budget_start, _ = period_bounds(policy.budget.period, now, policy.timezone)
        limits = HoldLimits(
            allowance=None if allowance.unlimited else allowance.amount,
            period_start=period_start,
            budget=budget,
            budget_period_start=budget_start,
            max_member_jobs=self._max_queued_per_member,
            max_guild_jobs=self._max_queued_per_guild,
        )
        if self.caps is not None:
            limits = await self.caps.apply(job.guild_id, limits, now)
        return await self._store.create_job_with_hold(job, limits, now=now)

    async def settle(
        self,
        job_id: str,
        status: JobStatus,
        *,
        delivered_count: int = 0,
        error_key: str | None = None,
        error_detail: str | None = None,
        expect: JobStatus | None = None,
    ) -> JobRecord | None:
        """Finish a job and settle its hold; None when it was already finished (nothing moves twice), or
        when `expect` is given and the job is no longer in that status."""
        return await self._store.finish_job(
            job_id,
            status,
            delivered_count=delivered_count,
            error_key=error_key,
            error_detail=error_detail,
            expect=expect,
            now=self._clock(),
        )

    async def balance(self, guild_id: int, user_id: int, role_ids: Sequence[int]) -> Balance:
        allowance, policy = await self._allowance_and_policy(guild_id, user_id, role_ids)
        period_start, resets_at = period_bounds(allowance.period, self._clock(), policy.timezone)
        totals = await self._store.member_totals(guild_id, user_id, period_start)
        available = None
        if not allowance.unlimited:
            assert allowance.amount is not None
            available = allowance.amount + totals.granted - totals.captured - totals.held
        return Balance(
            allowance=allowance,
            granted=totals.granted,
            captured=totals.captured,
            held=totals.held,
            available=available,
            period_start=period_start,
            resets_at=resets_at,
        )

    async def budget_status(self, guild_id: int) -> BudgetStatus:
        policy = await self._store.get_policy(guild_id)
        budget = policy.budget
        period: Period = "month" if budget is None else budget.period
        start, resets_at = period_bounds(period, self._clock(), policy.timezone)
        spent = await self._store.server_spend(guild_id, start)
        if budget is None or budget.unlimited:
            return BudgetStatus(
                budget=budget, spent=spent, remaining=None, resets_at=None if budget is None else resets_at
            )
        assert budget.amount is not None
        return BudgetStatus(budget=budget, spent=spent, remaining=max(budget.amount - spent, 0), resets_at=resets_at)

    async def grant(self, guild_id: int, user_id: int, amount: int, *, actor_id: int, reason: str) -> LedgerEntry:
        """Add credits to a member for the current period (audited)."""
        return await self._store.add_adjustment(
            guild_id,
            user_id,
            EntryKind.GRANT,
            _check_amount(amount),
            actor_id=actor_id,
            reason=reason,
            now=self._clock(),
        )

    async def deduct(self, guild_id: int, user_id: int, amount: int, *, actor_id: int, reason: str) -> LedgerEntry:
        """Remove credits from a member for the current period (audited); may leave them negative."""
        return await self._store.add_adjustment(
            guild_id,
            user_id,
            EntryKind.DEDUCT,
            _check_amount(amount),
            actor_id=actor_id,
            reason=reason,
            now=self._clock(),
        )
