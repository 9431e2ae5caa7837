"""The core's objects, built once per process from the settings and handed to the Discord adapter."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp

from bot import BOT_VERSION
from bot.config import Settings
from bot.credits.ledger import Ledger
from bot.credits.policy import PolicyService
from bot.generation.catalog import Catalog
from bot.generation.gateway import GatewayClient
from bot.generation.images import set_memory_budget
from bot.generation.polling import PollPlanner
from bot.jobs.scheduling import ConcurrencyLimits
from bot.jobs.service import JobService, Ownership, new_process_id
from bot.moderation.automod import AutoModChecker
from bot.moderation.blocklist import Moderator
from bot.ops.alerts import Alerts, WebhookSink
from bot.ops.caps import CapsPolicy
from bot.ops.metrics import Metrics
from bot.ops.seat import OperatorService, OpsHooks
from bot.store.base import Store


@dataclass
class Services:
    """Everything the cogs use. Lifetimes (session, store) are owned by `bot.__main__.run`."""

    settings: Settings
    catalog: Catalog
    store: Store
    ledger: Ledger
    gateway: GatewayClient
    jobs: JobService
    moderator: Moderator
    policy: PolicyService
    metrics: Metrics
    alerts: Alerts
    operator: OperatorService
    automod: AutoModChecker = field(default_factory=AutoModChecker)  # the servers' AutoMod rules, cached

    @classmethod
    def build(
        cls,
        settings: Settings,
        session: aiohttp.ClientSession,
        store: Store,
        *,
        downloads: aiohttp.ClientSession | None = None,
    ) -> Services:
        """Wire the core together. Raises `CatalogError` when the model catalog is unreadable.

        `downloads` fetches result images (`bot.net.guarded_session`); without it, `session` does.
        """
        catalog = Catalog.load(settings.model_catalog_path)
        set_memory_budget(settings.image_memory_budget_bytes)
        ledger = Ledger.from_settings(store, settings)
        gateway = GatewayClient.from_settings(session, settings, download_session=downloads)
        # The operator's seat: caps on every hold and admin figure, alerts, metrics, the kill switch.
        metrics = Metrics()
        caps = ledger.caps = CapsPolicy(store, settings)
        alerts = Alerts(
            store,
            ledger,
            failure_rate=settings.operator_alert_failure_rate,
            failure_window=settings.operator_alert_failure_window,
        )
        alerts.caps = caps
        if settings.operator_alert_webhook_url is not None:
            alerts.operator_sink = WebhookSink(session, settings.operator_alert_webhook_url)
        operator = OperatorService(store, caps, metrics)
        gateway.on_status = lambda status: metrics.gateway_requests.labels(status).inc()
        jobs = JobService(
            store,
            ledger,
            gateway,
            PollPlanner.from_settings(store, settings),
            limits=ConcurrencyLimits(
                per_member=settings.max_jobs_per_member,
                per_guild=settings.max_jobs_per_guild,
                global_=settings.max_jobs_global,
            ),
            progress_interval=settings.progress_edit_interval,
            hooks=OpsHooks(operator, metrics, alerts),
            member_roles_ttl=settings.member_roles_cache_seconds,
            progress_edits_per_second=settings.progress_edits_per_second or None,
            ownership=Ownership(
                new_process_id(),
                shards=settings.shards or (),
                version=BOT_VERSION,
                lease_seconds=settings.job_lease_seconds,
                heartbeat_seconds=settings.heartbeat_seconds,
            ),
        )
        operator.running_here = lambda: jobs.running_here
        operator.alive_seconds = jobs.ownership.alive_seconds
        policy = PolicyService(
            store,
            ledger,
            catalog,
            bot_default_model=settings.default_model,
            blocklist_max_terms=settings.blocklist_max_terms,
        )
        policy.caps = caps
        return cls(settings, catalog, store, ledger, gateway, jobs, Moderator(store), policy, metrics, alerts, operator)
