"""The operator's caps above every server, and server access.

The operator pays the gateway, so their limits sit above every server's own: a bot-wide cap per UTC day and
per UTC month (`OPERATOR_DAILY_CAP`, `OPERATOR_MONTHLY_CAP`), a cap per server (`OPERATOR_GUILD_CAP` by
default, or the operator's own figure for one server), and with `GUILD_ACCESS=allowlist` only servers the
operator approved. This module only decides the figures; the store checks them in the same guarded
statement that writes a hold (see `Store.create_job_with_hold`), so no race can pass them.

A server's own budget and allowances cannot be set above its cap: compared by rate per day, so 30 a day
fits a cap of 1,000 a month and 100 a day does not. "unlimited" stays allowed, and means "the cap applies".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from bot.config import Settings
from bot.credits.ledger import PERIOD_DAYS, period_bounds
from bot.errors import AboveOperatorCapError, GuildNotApprovedError
from bot.store.base import Store
from bot.store.records import Allowance, HoldLimits


class CapsPolicy:
    """Which operator caps apply to a hold, and whether an admin's figure fits under them."""

    def __init__(self, store: Store, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.daily_cap = settings.operator_daily_cap
        self.monthly_cap = settings.operator_monthly_cap
        self.default_guild_cap = (
            None
            if settings.operator_guild_cap is None
            else Allowance(amount=settings.operator_guild_cap, period=settings.operator_guild_cap_period)
        )
        self.allowlist = settings.guild_access == "allowlist"
        self._clock = clock

    async def guild_cap(self, guild_id: int) -> Allowance | None:
        """The operator's cap on one server: its own, else the settings' default, else none."""
        ops = await self._store.get_guild_ops(guild_id)
        return ops.cap if ops.cap is not None else self.default_guild_cap

    async def apply(self, guild_id: int, limits: HoldLimits, now: float) -> HoldLimits:
        """`limits` with the operator's caps added (the store guards them with the rest)."""
        ops = await self._store.get_guild_ops(guild_id)
        if self.allowlist and not ops.approved:
            raise GuildNotApprovedError()  # refused before the store too; the guard covers a race
        cap = ops.cap if ops.cap is not None else self.default_guild_cap
        day_start, _ = period_bounds("day", now)
        month_start, _ = period_bounds("month", now)
        cap_start = period_bounds(cap.period, now)[0] if cap is not None else 0.0
        return replace(
            limits,
            bot_daily_cap=self.daily_cap,
            bot_day_start=day_start,
            bot_monthly_cap=self.monthly_cap,
            bot_month_start=month_start,
            guild_cap=None if cap is None else cap.amount,
            guild_cap_start=cap_start,
            require_approval=self.allowlist,
        )

    async def check_admin_figure(self, guild_id: int, allowance: Allowance | None) -> None:
        """Refuse (`AboveOperatorCapError`, nothing written) a budget or allowance above the server's cap."""
        if allowance is None or allowance.unlimited:
            return
        cap = await self.guild_cap(guild_id)
        if cap is None or cap.amount is None:
            return
        assert allowance.amount is not None
        if allowance.amount / PERIOD_DAYS[allowance.period] > cap.amount / PERIOD_DAYS[cap.period]:
            raise AboveOperatorCapError(
                value=f"{allowance.amount}/{allowance.period}", cap=f"{cap.amount}/{cap.period}"
            )
