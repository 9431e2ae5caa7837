"""What server admins change: allowances, budgets, models, time zone, quote threshold, blocked terms, and
the reports they read (usage, audit, ledger export). Validation lives here so every front end refuses bad
input the same way, before anything is written; the store audits every change.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from bot.charts import DailySpend, daily_spend
from bot.credits.ledger import Ledger, period_bounds
from bot.errors import (
    BlocklistFullError,
    InvalidAmountError,
    InvalidValueError,
)
from bot.generation.catalog import Catalog
from bot.i18n import Phrase, languages
from bot.messages import text
from bot.moderation.blocklist import compile_term
from bot.store.base import Store
from bot.store.records import Allowance, BlockedTerm, GuildPolicy, Period, SpoilerMode

if TYPE_CHECKING:
    from bot.ops.caps import CapsPolicy

MAX_ALLOWANCE = 1_000_000
MAX_EXPORT_DAYS = 366
PERIODS: tuple[Period, ...] = ("day", "week", "month", "unlimited")


def check_allowance(amount: int | None, period: str) -> Allowance:
    """A valid allowance, or `InvalidAmountError` / `InvalidValueError`. Period "unlimited" ignores amount."""
    if period not in PERIODS:
        raise InvalidValueError(option=Phrase("field.period"), value=period, allowed=", ".join(PERIODS))
    if period == "unlimited":
        return Allowance(amount=None, period="unlimited")
    if amount is None or isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= MAX_ALLOWANCE:
        raise InvalidAmountError(value="(none)" if amount is None else amount, limit=MAX_ALLOWANCE)
    return Allowance(amount=amount, period=period)  # type: ignore[arg-type]


def check_timezone(name: str) -> str:
    """An IANA time zone name, or `InvalidValueError`."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidValueError(
            option=Phrase("field.timezone"), value=name, allowed=Phrase("allowed.iana_timezone")
        ) from None
    return name


def timezone_names(prefix: str, limit: int = 25) -> list[str]:
    """Time zone names containing `prefix` (for autocomplete)."""
    needle = prefix.lower()
    return sorted(z for z in available_timezones() if needle in z.lower())[:limit]


@dataclass(frozen=True)
class UsageReport:
    """A server's (or member's) spend in the current budget period."""

    period: Period
    period_start: float
    resets_at: float | None
    by_model: dict[str, int]
    top_members: list[tuple[int, int]]  # (user id, credits); empty for a member report
    total: int


class PolicyService:
    """Admin changes and reports for one bot; every change is validated, then written and audited."""

    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        catalog: Catalog,
        *,
        bot_default_model: str,
        blocklist_max_terms: int = 500,
        clock: Callable[[], float] = time.time,
    ):
        self._store = store
        self._ledger = ledger
        self._catalog = catalog
        self._bot_default_model = bot_default_model
        self._blocklist_max_terms = blocklist_max_terms
        self._clock = clock
        self.caps: CapsPolicy | None = None  # the operator's caps (bot.ops): no admin figure above them

    async def _within_caps(self, guild_id: int, allowance: Allowance | None) -> None:
        if self.caps is not None:
            await self.caps.check_admin_figure(guild_id, allowance)

    async def set_default_allowance(self, guild_id: int, actor_id: int, amount: int | None, period: str) -> GuildPolicy:
        allowance = check_allowance(amount, period)
        await self._within_caps(guild_id, allowance)
        return await self._store.update_policy(
            guild_id, actor_id=actor_id, now=self._clock(), default_allowance=allowance
        )

    async def set_member_allowance(
        self, guild_id: int, actor_id: int, user_id: int, amount: int | None, period: str | None
    ) -> Allowance | None:
        """Set a member's override (period None removes it)."""
        allowance = None if period is None else check_allowance(amount, period)
        await self._within_caps(guild_id, allowance)
        await self._store.set_member_allowance(guild_id, user_id, allowance, actor_id=actor_id, now=self._clock())
        return allowance

    async def set_role_allowance(
        self, guild_id: int, actor_id: int, role_id: int, amount: int | None, period: str | None
    ) -> Allowance | None:
        """Set a role's allowance (period None removes it)."""
        allowance = None if period is None else check_allowance(amount, period)
        await self._within_caps(guild_id, allowance)
        await self._store.set_role_allowance(guild_id, role_id, allowance, actor_id=actor_id, now=self._clock())
        return allowance

    async def set_budget(self, guild_id: int, actor_id: int, amount: int | None, period: str | None) -> GuildPolicy:
        """Cap the server's spend per period (period None or "unlimited" removes the cap)."""
        budget = None if period in (None, "unlimited") else check_allowance(amount, period)  # type: ignore[arg-type]
        await self._within_caps(guild_id, budget)
        return await self._store.update_policy(guild_id, actor_id=actor_id, now=self._clock(), budget=budget)

    async def set_model_allowed(self, guild_id: int, actor_id: int, model: str, allowed: bool) -> GuildPolicy:
        """Allow or refuse a model; the model /imagine falls back to cannot be refused (members would be
        refused without having picked anything)."""
        spec = self._catalog.get(model)
        # Checked by the store in the write's own transaction: two admins at once cannot race it.
        return await self._store.set_model_rule(
            guild_id,
            spec.name,
            allowed,
            actor_id=actor_id,
            now=self._clock(),
            fallback_default=self._bot_default_model,
        )

    async def set_default_model(self, guild_id: int, actor_id: int, model: str) -> GuildPolicy:
        """Make `model` the server's default; the store refuses (ModelDisabledError) a disallowed one in
        the write's own transaction."""
        spec = self._catalog.get(model)
        return await self._store.update_policy(guild_id, actor_id=actor_id, now=self._clock(), default_model=spec.name)

    async def set_timezone(self, guild_id: int, actor_id: int, name: str) -> GuildPolicy:
        zone = check_timezone(name)
        return await self._store.update_policy(guild_id, actor_id=actor_id, now=self._clock(), timezone=zone)

    async def set_quote_threshold(self, guild_id: int, actor_id: int, amount: int) -> GuildPolicy:
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= MAX_ALLOWANCE:
            raise InvalidAmountError(value=amount, limit=MAX_ALLOWANCE)
        return await self._store.update_policy(guild_id, actor_id=actor_id, now=self._clock(), quote_threshold=amount)

    async def set_language(self, guild_id: int, actor_id: int, language: str) -> GuildPolicy:
        """The language of what the bot posts on its own here: "auto" (Discord's preferred locale) or a code."""
        allowed = ("auto", *languages())
        if language not in allowed:
            raise InvalidValueError(option=Phrase("field.language"), value=language, allowed=", ".join(allowed))
        return await self._store.update_policy(guild_id, actor_id=actor_id, now=self._clock(), language=language)

    async def add_blocked_term(self, guild_id: int, actor_id: int, pattern: str, is_regex: bool) -> BlockedTerm:
        """Add a term. Refused, with nothing written, when it does not compile or the list is full."""
        compile_term(pattern, is_regex)  # refuse what would not compile, before writing
        term = await self._store.add_blocked_term(
            guild_id,
            pattern.strip(),
            is_regex,
            actor_id=actor_id,
            now=self._clock(),
            max_terms=self._blocklist_max_terms,
        )
        if term is None:
            raise BlocklistFullError(limit=self._blocklist_max_terms)
        return term

    async def set_spoiler_mode(self, guild_id: int, actor_id: int, mode: SpoilerMode) -> GuildPolicy:
        if mode not in ("off", "all", "outside_nsfw"):
            raise InvalidValueError(
                option=Phrase("field.spoiler_mode"), value=str(mode)[:50], allowed="off, all, outside_nsfw"
            )
        return await self._store.update_policy(guild_id, actor_id=actor_id, now=self._clock(), spoiler_mode=mode)

    async def set_channel_allowed(self, guild_id: int, actor_id: int, channel_id: int, allowed: bool) -> bool:
        return await self._store.set_channel_allowed(
            guild_id, channel_id, allowed, actor_id=actor_id, now=self._clock()
        )

    async def remove_blocked_term(self, guild_id: int, actor_id: int, term_id: int) -> bool:
        return await self._store.remove_blocked_term(guild_id, term_id, actor_id=actor_id, now=self._clock())

    # --- reports ---------------------------------------------------------------------------------------------

    async def usage(self, guild_id: int, *, user_id: int | None = None, top: int = 10) -> UsageReport:
        """Spend in the server's budget period (the month when there is no budget)."""
        policy = await self._store.get_policy(guild_id)
        period: Period = policy.budget.period if policy.budget else "month"
        start, resets_at = period_bounds(period, self._clock(), policy.timezone)
        by_model = await self._store.usage_by_model(guild_id, start, user_id=user_id)
        top_members = [] if user_id is not None else await self._store.top_spenders(guild_id, start, top)
        return UsageReport(period, start, resets_at, by_model, top_members, sum(by_model.values()))

    async def current_period_days(self, guild_id: int) -> tuple[str, str]:
        """The first day of the current usage period and today (YYYY-MM-DD, server time zone): the
        range `/usage export` takes when no dates are given."""
        policy = await self._store.get_policy(guild_id)
        period: Period = policy.budget.period if policy.budget else "month"
        now = self._clock()
        start, _ = period_bounds(period, now, policy.timezone)
        zone = ZoneInfo(policy.timezone)
        first = datetime.fromtimestamp(start, zone).date()
        return first.isoformat(), datetime.fromtimestamp(now, zone).date().isoformat()

    async def daily_usage(self, guild_id: int) -> tuple[DailySpend, int | None]:
        """This period's captured credits per day and model (the whole period, days to come at 0), and the
        server's budget for the period (None without one)."""
        policy = await self._store.get_policy(guild_id)
        period: Period = policy.budget.period if policy.budget else "month"
        now = self._clock()
        start, resets_at = period_bounds(period, now, policy.timezone)
        end = resets_at if resets_at is not None else now + 1
        entries = await self._store.ledger_entries(guild_id, start, end)
        budget = policy.budget.amount if policy.budget is not None and not policy.budget.unlimited else None
        return daily_spend(entries, policy.timezone, start, end, now=now), budget

    async def export_ledger(
        self, guild_id: int, first_day: str, last_day: str, locale: str | None = None
    ) -> tuple[bytes, int]:
        """The ledger from `first_day` to `last_day` (YYYY-MM-DD, inclusive, in the server's time zone) as CSV.

        Column headers are in the language of `locale`; values are not translated (ISO 8601 UTC times).
        Returns the CSV bytes and the number of rows.
        """
        first, last = parse_export_range(first_day, last_day)
        policy = await self._store.get_policy(guild_id)
        zone = ZoneInfo(policy.timezone)
        start = datetime.combine(first, datetime.min.time(), zone).timestamp()
        end = datetime.combine(last + timedelta(days=1), datetime.min.time(), zone).timestamp()
        entries = await self._store.ledger_entries(guild_id, start, end)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow([text(f"csv.{column}", locale) for column in CSV_COLUMNS])
        for e in entries:
            when = datetime.fromtimestamp(e.created_at).astimezone(ZoneInfo("UTC")).isoformat(timespec="seconds")
            writer.writerow(
                [
                    e.id,
                    when,
                    e.user_id,
                    e.kind.value,
                    e.amount,
                    e.job_id or "",
                    e.model or "",
                    e.actor_id or "",
                    _csv_safe(e.reason or ""),
                ]
            )
        return buffer.getvalue().encode("utf-8"), len(entries)


CSV_COLUMNS = ("id", "time_utc", "user_id", "kind", "amount", "job_id", "model", "actor_id", "reason")


def parse_export_range(first_day: str, last_day: str) -> tuple[date, date]:
    """Validate an export's dates (YYYY-MM-DD, first <= last, at most MAX_EXPORT_DAYS): `InvalidValueError`."""
    try:
        first, last = date.fromisoformat(first_day), date.fromisoformat(last_day)
    except ValueError:
        raise InvalidValueError(
            option=Phrase("field.date"), value=f"{first_day} – {last_day}", allowed="YYYY-MM-DD"
        ) from None
    if last < first or (last - first).days >= MAX_EXPORT_DAYS:
        raise InvalidValueError(
            option=Phrase("field.date_range"),
            value=f"{first_day} – {last_day}",
            allowed=Phrase("allowed.date_range", {"days": MAX_EXPORT_DAYS}),
        )
    return first, last


def _csv_safe(value: str) -> str:
    """Neutralise spreadsheet formulas in free text (CSV injection)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
