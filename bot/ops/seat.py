"""The operator's controls and the job hooks that feed metrics and alerts.

`OperatorService` is what `/operator` calls: spend reports, caps, server approval, the kill switch and the
fleet view. The kill switch is a row in the store (`meta`), so it holds across restarts and for every
process sharing the database: while it is on, no new job is taken and no queued job starts; running jobs
go on to the end.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.credits.ledger import period_bounds
from bot.credits.policy import check_allowance
from bot.errors import BotError, InvalidValueError, RequestError
from bot.i18n import Phrase
from bot.ops.alerts import Alerts
from bot.ops.caps import CapsPolicy
from bot.ops.hooks import JobHooks
from bot.ops.metrics import Metrics
from bot.store.base import Store
from bot.store.records import GuildOps, JobRecord, JobStatus, NewJob, SpendLine

log = logging.getLogger(__name__)

PAUSED_KEY = "operator.generation_paused"


@dataclass(frozen=True)
class SpendReport:
    """The bot's spend (captured credits) today and this month (UTC), by server and by model."""

    today: int
    month: int
    held_now: int
    today_by_guild: dict[int, int]
    month_by_guild: dict[int, int]
    today_by_model: dict[str, int]
    month_by_model: dict[str, int]


@dataclass(frozen=True)
class ProcessInfo:
    """One bot process that is alive."""

    name: str
    running_jobs: int
    shards: tuple[int, ...] = ()  # empty: unsharded


@dataclass(frozen=True)
class FleetView:
    processes: list[ProcessInfo]
    running: int  # jobs submitting, polling or delivering, in any process
    queued: int
    paused: bool


def _totals(lines: list[SpendLine]) -> tuple[dict[int, int], dict[str, int]]:
    by_guild: dict[int, int] = {}
    by_model: dict[str, int] = {}
    for line in lines:
        by_guild[line.guild_id] = by_guild.get(line.guild_id, 0) + line.captured
        by_model[line.model] = by_model.get(line.model, 0) + line.captured
    return by_guild, by_model


class OperatorService:
    """What the operator can see and change."""

    def __init__(
        self, store: Store, caps: CapsPolicy, metrics: Metrics, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self.caps = caps
        self._metrics = metrics
        self._clock = clock
        self.running_here: Callable[[], int] = lambda: 0  # set by the job service's owner
        self.process_name = f"{socket.gethostname()}:{os.getpid()}"
        self.alive_seconds = 15.0  # a heartbeat older than this is a dead process (set from the settings)

    async def paused(self) -> bool:
        return await self._store.get_meta(PAUSED_KEY) == "1"

    async def set_paused(self, paused: bool) -> None:
        await self._store.set_meta(PAUSED_KEY, "1" if paused else "0")
        self._metrics.paused.set(1 if paused else 0)
        log.warning("generation %s by the operator", "paused" if paused else "resumed")

    async def spend(self) -> SpendReport:
        now = self._clock()
        day_start, _ = period_bounds("day", now)
        month_start, _ = period_bounds("month", now)
        today_lines = await self._store.spend_by_guild_and_model(day_start)
        month_lines = await self._store.spend_by_guild_and_model(month_start)
        today_by_guild, today_by_model = _totals(today_lines)
        month_by_guild, month_by_model = _totals(month_lines)
        held = await self._store.bot_spend(now + 1)  # nothing is captured after now: only the active holds
        return SpendReport(
            today=sum(today_by_guild.values()),
            month=sum(month_by_guild.values()),
            held_now=held,
            today_by_guild=today_by_guild,
            month_by_guild=month_by_guild,
            today_by_model=today_by_model,
            month_by_model=month_by_model,
        )

    async def set_guild_cap(self, guild_id: int, actor_id: int, amount: int | None, period: str | None) -> GuildOps:
        """Cap one server (period None removes its own cap: the settings' default applies again)."""
        if period == "unlimited":
            raise InvalidValueError(option=Phrase("field.period"), value=period, allowed="day, week, month")
        cap = None if period is None else check_allowance(amount, period)
        return await self._store.set_guild_ops(guild_id, actor_id=actor_id, now=self._clock(), cap=cap)

    async def set_approved(self, guild_id: int, actor_id: int, approved: bool) -> GuildOps:
        return await self._store.set_guild_ops(guild_id, actor_id=actor_id, now=self._clock(), approved=approved)

    async def set_log_channel(self, guild_id: int, actor_id: int, channel_id: int | None) -> GuildOps:
        """A server admin's choice of log channel (None: none), audited."""
        return await self._store.set_guild_ops(
            guild_id, actor_id=actor_id, now=self._clock(), log_channel_id=channel_id
        )

    async def servers(self) -> list[GuildOps]:
        return await self._store.all_guild_ops()

    async def fleet(self) -> FleetView:
        counts = await self._store.job_counts()
        running = sum(n for status, n in counts.items() if status is not JobStatus.QUEUED)
        # Every process sharing the store, from the heartbeats, with the jobs each owns.
        alive = await self._store.alive_processes(alive_seconds=self.alive_seconds, now=self._clock())
        owned = await self._store.jobs_per_owner()
        processes = [ProcessInfo(p.process_id, owned.get(p.process_id, 0), p.shards) for p in alive]
        if not processes:  # not started yet (no heartbeat): at least this process
            processes = [ProcessInfo(self.process_name, self.running_here())]
        return FleetView(processes, running, counts.get(JobStatus.QUEUED, 0), await self.paused())


class OpsHooks(JobHooks):
    """The job service's hooks: the kill switch, metrics, alerts."""

    def __init__(
        self, operator: OperatorService, metrics: Metrics, alerts: Alerts, *, clock: Callable[[], float] = time.time
    ):
        self._operator = operator
        self._metrics = metrics
        self._alerts = alerts
        self._clock = clock

    async def paused(self) -> bool:
        return await self._operator.paused()

    async def refused(self, job: NewJob, error: RequestError) -> None:
        await self._alerts.hold_refused(job.guild_id, error)

    def held(self, job: JobRecord) -> None:
        self._metrics.credits_held.inc(job.hold_amount)

    async def finished(
        self, job: JobRecord, error: BotError | None, *, polls: int = 0, detection_lag: float | None = None
    ) -> None:
        m = self._metrics
        m.jobs.labels(job.model, job.status.value).inc()
        m.credits_captured.inc(job.charged)
        if job.mode == "async" and job.operation_id:
            m.polls_per_job.labels(job.model).observe(polls)
        if detection_lag is not None:
            m.detection_lag_seconds.labels(job.model).observe(detection_lag)
        if error is None and job.started_at is not None and job.finished_at is not None:
            m.generation_seconds.labels(job.model).observe(max(0.0, job.finished_at - job.started_at))
        try:
            await self._alerts.job_finished(job.guild_id, job.model, error)
        except Exception:
            log.warning("alerts for job %s failed", job.id, exc_info=True)
