"""The core's objects, built once per process from the settings and handed to the Discord adapter."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from bot.catalog import Catalog
from bot.config import Settings
from bot.gateway import GatewayClient
from bot.images import set_memory_budget
from bot.jobs import JobService
from bot.ledger import Ledger
from bot.moderation import Moderator
from bot.policy import PolicyService
from bot.polling import PollPlanner
from bot.scheduling import ConcurrencyLimits
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

    @classmethod
    def build(cls, settings: Settings, session: aiohttp.ClientSession, store: Store) -> Services:
        """Wire the core together. Raises `CatalogError` when the model catalog is unreadable."""
        catalog = Catalog.load(settings.model_catalog_path)
        set_memory_budget(settings.image_memory_budget_bytes)
        ledger = Ledger.from_settings(store, settings)
        gateway = GatewayClient.from_settings(session, settings)
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
        )
        policy = PolicyService(store, ledger, catalog, bot_default_model=settings.default_model)
        return cls(settings, catalog, store, ledger, gateway, jobs, Moderator(store), policy)
