"""The operator's side of one running process: the health server, the event-loop watch, the 429 count."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from bot.config import Settings
from bot.ops.health import HealthServer
from bot.ops.metrics import RATE_LIMIT_LOGGERS, DiscordRateLimitCounter, Metrics
from bot.store.base import Store

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def ops_running(
    settings: Settings,
    metrics: Metrics,
    store: Store,
    *,
    discord_ready: Callable[[], bool],
    dispatching: Callable[[], bool],
) -> AsyncIterator[HealthServer | None]:
    """Run the health server (when HEALTH_PORT is set) and the event-loop watch for the block's lifetime."""

    async def readiness() -> dict[str, bool]:
        try:
            await store.get_meta("readiness-probe")
            store_ok = True
        except Exception:
            store_ok = False
        return {"discord": discord_ready(), "store": store_ok, "dispatching": dispatching()}

    counter = DiscordRateLimitCounter(metrics)
    for name in RATE_LIMIT_LOGGERS:
        logging.getLogger(name).addHandler(counter)
    watch = asyncio.create_task(metrics.watch_event_loop(), name="event-loop-watch")
    try:
        if settings.health_port is None:
            yield None
        else:
            async with HealthServer(settings.health_host, settings.health_port, metrics, readiness) as server:
                yield server
    finally:
        for name in RATE_LIMIT_LOGGERS:
            logging.getLogger(name).removeHandler(counter)
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
