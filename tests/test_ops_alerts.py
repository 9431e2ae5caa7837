"""Operator alerts: once per incident or period, never a flood; the webhook sink over a local server."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from bot.credits.ledger import Ledger
from bot.errors import BotDailyCapError, GatewayAuthError, ServerCapReachedError, UpstreamError
from bot.ops.alerts import Alerts, WebhookSink
from bot.store.base import Store
from bot.store.records import Allowance

NOW = 1_710_000_000.0


def alerts_for(store: Store, sent: list[str], clock: float = NOW, **options: Any) -> Alerts:
    ledger = Ledger(store, default_allowance=Allowance(100, "month"), clock=lambda: clock)
    alerts = Alerts(store, ledger, clock=lambda: clock, **options)

    async def sink(content: str) -> None:
        sent.append(content)

    alerts.operator_sink = sink
    return alerts


async def test_a_model_failing_above_the_rate_alerts_once_until_it_recovers(store: Store) -> None:
    sent: list[str] = []
    alerts = alerts_for(store, sent, failure_rate=0.5, failure_window=10)
    for _ in range(4):
        await alerts.job_finished(1, "model-a", None)
    for _ in range(6):  # the 5th failure makes 5 of 9: above half
        await alerts.job_finished(1, "model-a", UpstreamError("boom"))
        await alerts.job_finished(1, "model-b", None)
    assert sent == ["⚠️ `model-a` failed 56 % of its latest 9 jobs."], "once, though the 6th failure made 60 %"
    for _ in range(8):  # recovered: the share falls to 0 of 10
        await alerts.job_finished(1, "model-a", None)
    for _ in range(6):
        await alerts.job_finished(1, "model-a", UpstreamError("boom"))
    assert len(sent) == 2, "a new incident after recovery is announced again"


async def test_a_401_incident_is_announced_once_and_closes_with_a_delivered_job(store: Store) -> None:
    sent: list[str] = []
    alerts = alerts_for(store, sent, failure_window=100)
    for _ in range(3):
        await alerts.job_finished(1, "model-a", GatewayAuthError("401"))
    assert len(sent) == 1 and "(401)" in sent[0]
    await alerts.job_finished(1, "model-a", None)
    await alerts.job_finished(1, "model-a", GatewayAuthError("401"))
    assert len(sent) == 2


async def test_a_cap_alert_is_sent_once_per_period_even_from_a_second_process(store: Store) -> None:
    sent: list[str] = []
    first, second = alerts_for(store, sent), alerts_for(store, sent)
    for alerts in (first, second, first):
        await alerts.hold_refused(1, BotDailyCapError())
        await alerts.hold_refused(2, ServerCapReachedError(needed=5, remaining=0))
    assert sorted(sent) == sorted(
        [
            "⚠️ The bot reached OPERATOR_DAILY_CAP: requests are refused until midnight UTC.",
            "⚠️ Server 2 reached its operator cap: its requests are refused until it resets.",
        ]
    )
    await alerts_for(store, sent, clock=NOW + 86_400).hold_refused(1, BotDailyCapError())
    assert len(sent) == 3, "the next day is a new period"


async def test_the_webhook_sink_posts_the_alert_without_mentions() -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook/{token}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            await WebhookSink(session, SecretStr(f"http://127.0.0.1:{port}/hook/secret"))("hello operator")
    finally:
        await runner.cleanup()
    assert received == [{"content": "hello operator", "allowed_mentions": {"parse": []}}]


async def test_log_channel_entries_follow_the_servers_language_setting_without_the_adapter(
    store: Store,
) -> None:
    """With no Discord locale to ask (no adapter), the admin's /server language alone picks the language."""
    posted: list[tuple[int, str]] = []
    alerts = alerts_for(store, [])

    async def guild_sink(channel_id: int, content: str) -> None:
        posted.append((channel_id, content))

    alerts.guild_sink = guild_sink
    await store.set_guild_ops(1, actor_id=1234567, now=NOW, log_channel_id=55)
    await alerts.forward_audit(1)  # as after each command
    await store.update_policy(1, actor_id=1234567, now=NOW, language="ko")
    await alerts.forward_audit(1)
    assert [channel for channel, _ in posted] == [55, 55]
    english = "Admin change by <@1234567>: log channel set (`server.log_channel`) · log_channel_id=55"
    assert posted[0][1] == english, "a mention keeps its plain digits"
    assert posted[1][1] == "<@1234567> 님의 관리자 변경: 서버 설정 변경(`policy.update`) · language=ko"
