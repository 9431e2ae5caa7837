"""Alerts to the operator and to a server's log channel: each once per incident or threshold, never a flood.

To the operator: the gateway rejected the key (401), the gateway's credits ran out (402), a cap was reached,
a model's failures went above a share of its latest jobs. An incident of 401/402 or of a model's failures is
open until it clears (a job delivered; the model's share back under half the threshold), and is announced
once while open. A cap or a budget threshold is announced once per period, claimed in the store
(`Store.claim_alert`), so a restart or a second process does not repeat it.

Where they go is the adapter's business: `operator_sink` and `guild_sink` are set by `cogs/operator.py`
(a Discord channel) or by `WebhookSink` (OPERATOR_ALERT_WEBHOOK_URL). Every text comes from the catalog, in
the language of the server it is posted in: a log channel's notices in its server's language (issue 11:
what the bot posts on its own follows the server), the operator's alerts in the language of the alert
channel's server (`operator_language`), or English for a webhook, which has no server.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from pydantic import SecretStr

from bot.credits.ledger import Ledger, period_bounds
from bot.errors import (
    BotDailyCapError,
    BotError,
    BotMonthlyCapError,
    ContentPolicyError,
    GatewayAuthError,
    GatewayCreditsExhaustedError,
    GatewayError,
    RequestError,
    RequestRejectedError,
    ServerCapReachedError,
)
from bot.i18n import server_language
from bot.messages import has_text, text
from bot.ops.caps import CapsPolicy
from bot.store.base import Store

log = logging.getLogger(__name__)

OperatorSink = Callable[[str], Awaitable[None]]
GuildSink = Callable[[int, str], Awaitable[None]]  # (channel id, text)
GuildLanguage = Callable[[int], Awaitable[str]]  # a server's language, from its id
OperatorLanguage = Callable[[], Awaitable[str | None]]  # the language of the operator's alert channel

BUDGET_THRESHOLDS = (100, 80, 50)  # percent, highest first
AUDIT_FORWARD_BATCH = 20
WEBHOOK_TIMEOUT = aiohttp.ClientTimeout(total=10)


class WebhookSink:
    """Posts operator alerts to a Discord-style webhook URL (`{"content": ...}`)."""

    def __init__(self, session: aiohttp.ClientSession, url: SecretStr) -> None:
        self._session = session
        self._url = url

    async def __call__(self, content: str) -> None:
        async with self._session.post(
            self._url.get_secret_value(),
            json={"content": content, "allowed_mentions": {"parse": []}},
            timeout=WEBHOOK_TIMEOUT,  # an alert never holds up the job that raised it for long
        ) as resp:
            if resp.status >= 300:
                log.warning("the operator alert webhook answered HTTP %s", resp.status)


class Alerts:
    """Decides when to alert, and sends through the sinks (alerts are best effort: never raise)."""

    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        *,
        failure_rate: float = 0.5,
        failure_window: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._failure_rate = failure_rate
        self._window = failure_window
        self._clock = clock
        self.caps: CapsPolicy | None = None  # names the period of a server's cap
        self.operator_sink: OperatorSink | None = None
        self.guild_sink: GuildSink | None = None
        # Set by the adapter, which knows Discord's preferred_locale; without it, the admin's setting alone.
        self.guild_language: GuildLanguage | None = None
        self.operator_language: OperatorLanguage | None = None
        self._open_incidents: set[str] = set()
        self._outcomes: dict[str, deque[bool]] = {}

    async def _to_operator(self, key: str, **params: Any) -> None:
        if self.operator_sink is None:
            log.warning("operator alert %s (no OPERATOR_ALERT_CHANNEL_ID or webhook set)", key)
            return
        language = None
        try:
            language = None if self.operator_language is None else await self.operator_language()
        except Exception:  # the alert matters more than its language: English then
            log.warning("could not tell the language of the operator's alert channel", exc_info=True)
        try:
            await self.operator_sink(text(key, language, **params))
            log.info("sent operator alert %s", key)
        except Exception:
            log.warning("could not send operator alert %s", key, exc_info=True)

    async def _incident(self, name: str, key: str, **params: Any) -> None:
        if name in self._open_incidents:
            return
        self._open_incidents.add(name)
        await self._to_operator(key, **params)

    async def job_finished(self, guild_id: int, model: str, error: BotError | None) -> None:
        """Count a settled job for the gateway incidents and the model's failure share."""
        if isinstance(error, GatewayAuthError):
            await self._incident("gateway.401", "alert.gateway_auth")
        elif isinstance(error, GatewayCreditsExhaustedError):
            await self._incident("gateway.402", "alert.gateway_credits")
        if error is None:
            self._open_incidents.discard("gateway.401")
            self._open_incidents.discard("gateway.402")
        # A refused prompt says nothing about the model's health, and a rejected key or exhausted credits
        # fail every model at once: those are one incident of their own, not one per model.
        not_the_model = ContentPolicyError | RequestRejectedError | GatewayAuthError | GatewayCreditsExhaustedError
        if error is None or (isinstance(error, GatewayError) and not isinstance(error, not_the_model)):
            await self._model_outcome(model, error is not None)
        if error is None:
            await self.budget_check(guild_id)

    async def _model_outcome(self, model: str, failed: bool) -> None:
        outcomes = self._outcomes.setdefault(model, deque(maxlen=self._window))
        outcomes.append(failed)
        if len(outcomes) < min(self._window, 5):
            return
        share = sum(outcomes) / len(outcomes)
        name = f"model.{model}"
        if share > self._failure_rate:
            await self._incident(
                name, "alert.model_failures", model=model, percent=round(share * 100), jobs=len(outcomes)
            )
        elif share <= self._failure_rate / 2:
            self._open_incidents.discard(name)

    async def hold_refused(self, guild_id: int, error: RequestError) -> None:
        """A cap refused a hold: tell the operator once per cap and period."""
        now = self._clock()
        if isinstance(error, BotDailyCapError):
            key, start = "alert.bot_daily_cap", period_bounds("day", now)[0]
            claim = f"cap.bot.day:{start:.0f}"
        elif isinstance(error, BotMonthlyCapError):
            key, start = "alert.bot_monthly_cap", period_bounds("month", now)[0]
            claim = f"cap.bot.month:{start:.0f}"
        elif isinstance(error, ServerCapReachedError):
            cap = None if self.caps is None else await self.caps.guild_cap(guild_id)
            key, start = "alert.server_cap", period_bounds(cap.period if cap else "day", now)[0]
            claim = f"cap.guild.{guild_id}:{start:.0f}"
        else:
            return
        if await self._store.claim_alert(claim, now=now):
            await self._to_operator(key, guild=guild_id)

    async def budget_check(self, guild_id: int) -> None:
        """Post to the server's log channel when its budget crosses 50, 80 or 100 % of its period, once each."""
        ops = await self._store.get_guild_ops(guild_id)
        if ops.log_channel_id is None or self.guild_sink is None:
            return
        status = await self._ledger.budget_status(guild_id)
        budget = status.budget
        if budget is None or budget.unlimited or not budget.amount:
            return
        percent = status.spent * 100 // budget.amount
        period = f"{status.resets_at or 0:.0f}"  # one claim per threshold and period: its reset time names it
        crossed = [t for t in BUDGET_THRESHOLDS if percent >= t]
        claimed = [
            t for t in crossed if await self._store.claim_alert(f"budget.{guild_id}:{period}:{t}", now=self._clock())
        ]
        if claimed:  # several crossed at once: one message, for the highest
            language = await self._language(guild_id)
            await self._to_guild(
                ops.log_channel_id,
                "log.budget",
                language,
                percent=max(claimed),
                spent=status.spent,
                budget=budget.amount,
                period=text(f"log.this_{budget.period}", language),
            )

    async def forward_audit(self, guild_id: int) -> None:
        """Post the server's admin changes not yet forwarded to its log channel (each once)."""
        ops = await self._store.get_guild_ops(guild_id)
        if ops.log_channel_id is None or self.guild_sink is None:
            return
        marker = f"audit_forwarded:{guild_id}"
        after = int(await self._store.get_meta(marker) or 0)
        if after == 0:  # a new log channel starts from now, not with the whole history
            recent = await self._store.recent_audit(guild_id, 1)
            after = recent[0].id - 1 if recent else 0
        entries = await self._store.audit_after(guild_id, after, AUDIT_FORWARD_BATCH)
        language = await self._language(guild_id) if entries else None
        for entry in entries:
            # Claimed first: a second process (or a retry) never posts the same change twice.
            if await self._store.claim_alert(f"audit.{guild_id}:{entry.id}", now=self._clock()):
                detail = ", ".join(f"{k}={v}" for k, v in entry.detail.items())[:1500]
                code = f"audit.{entry.action}"
                name = text(code, language) if has_text(code) else entry.action
                await self._to_guild(
                    ops.log_channel_id,
                    "log.audit",
                    language,
                    actor=entry.actor_id,
                    action=entry.action,
                    name=name,
                    detail=detail,
                )
        if entries:
            await self._store.set_meta(marker, str(entries[-1].id))

    async def _language(self, guild_id: int) -> str:
        """The server's language for its log channel: the adapter's answer, else the admin's setting."""
        if self.guild_language is not None:
            try:
                return await self.guild_language(guild_id)
            except Exception:
                log.warning("could not tell the language of server %s", guild_id, exc_info=True)
        return server_language((await self._store.get_policy(guild_id)).language, None)

    async def _to_guild(self, channel_id: int, key: str, language: str | None, **params: Any) -> None:
        assert self.guild_sink is not None
        try:
            await self.guild_sink(channel_id, text(key, language, **params))
        except Exception:
            log.warning("could not post %s to log channel %s", key, channel_id, exc_info=True)
