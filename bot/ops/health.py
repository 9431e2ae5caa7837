"""Health and metrics over HTTP (aiohttp's web server): /healthz, /readyz, /metrics.

Off unless HEALTH_PORT is set. /healthz answers 200 while the process serves requests at all (the
Dockerfile's HEALTHCHECK). /readyz answers 200 only when every check passes (connected to Discord, the store
answers, jobs are being dispatched) and 503 with the failing checks otherwise. /metrics is Prometheus's
text format. Nothing here shows a secret, a prompt or a member.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.ops.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[dict[str, bool]]]
CHECK_TIMEOUT = 2.0  # seconds a readiness check may take before it counts as failed


class HealthServer:
    """The HTTP endpoints, owned with `async with` (bound on enter, closed on exit)."""

    def __init__(self, host: str, port: int, metrics: Metrics, readiness: Readiness) -> None:
        self._host = host
        self._port = port
        self._metrics = metrics
        self._readiness = readiness
        self._runner: web.AppRunner | None = None
        self.port = port  # the bound port (useful with port 0)

    async def __aenter__(self) -> HealthServer:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_page)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self.port = self._runner.addresses[0][1]  # the port actually bound (HEALTH_PORT=0 picks one)
        log.info("health and metrics on http://%s:%s", self._host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), timeout=5)
            self._runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        try:
            checks = await asyncio.wait_for(self._readiness(), timeout=CHECK_TIMEOUT)
        except TimeoutError:
            checks = {"checks_answered": False}
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def _metrics_page(self, _: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE})
