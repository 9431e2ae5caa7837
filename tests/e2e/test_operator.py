"""The operator's seat end to end: the real bot against the fake Discord and the fake gateway.

Who may run /operator (checked in the bot), the kill switch, server access, caps that an admin cannot
raise past, alerts to the operator's channel and to a server's log channel, and health and metrics over HTTP.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.store.records import EntryKind, GuildPolicy, JobStatus
from tests.e2e.harness import WAIT, World
from tests.e2e.test_admin import deliver, guild_id, ledger, refused_imagine, says
from tests.fakes.fake_discord import FakeUser
from tests.fakes.fake_gateway import FakeGateway, Reply

NOT_OPERATOR = "Only the bot's operator can do that."
GEMINI, XAI = "gemini-2.5-flash-image", "xai/grok-imagine-image"  # 39 and 20 credits per image

OPERATOR_COMMANDS: dict[str, dict[str, Any]] = {
    "operator spend": {},
    "operator fleet": {},
    "operator caps": {},
    "operator cap": {"server": "123456789012345678", "period": "day", "amount": 5},
    "operator approve": {"server": "123456789012345678"},
    "operator remove": {"server": "123456789012345678"},
    "operator pause": {},
    "operator resume": {},
}


def operator_of(world: World) -> Any:
    """The guild owner, made an operator through OWNER_IDS (see `start_with_operator`)."""
    return world.fd.owner


async def start_with_operator(world: World, **overrides: Any) -> None:
    await world.start(owner_ids=str(world.fd.owner.id), **overrides)  # type: ignore[union-attr]


# --- who the operator is ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(OPERATOR_COMMANDS))
async def test_operator_commands_are_refused_to_a_server_admin_and_change_nothing(world: World, path: str) -> None:
    await start_with_operator(world)
    assert await says(world, path, OPERATOR_COMMANDS[path], user=world.fd.admin) == NOT_OPERATOR
    assert await world.store.get_meta("operator.generation_paused") is None
    assert await world.store.all_guild_ops() == []
    assert await world.store.recent_audit(123456789012345678, 10) == []


async def test_the_application_owner_a_team_admin_and_owner_ids_are_operators(world: World) -> None:
    fd = world.fd
    assert fd.guild is not None
    fd.guild.add_member(fd.application_owner)
    await start_with_operator(world)
    assert (await says(world, "operator fleet", user=fd.application_owner)).startswith("Jobs running: 0")
    assert (await says(world, "operator fleet", user=operator_of(world))).startswith("Jobs running: 0")
    assert await says(world, "operator fleet", user=fd.alice) == NOT_OPERATOR


async def test_team_members_with_an_admin_or_developer_role_are_operators(world: World) -> None:
    fd = world.fd
    assert fd.guild is not None
    dev, reader = FakeUser(id=fd.application_owner.id + 1, username="dev"), fd.add_user("reader")
    fd.application_team = [(dev, "developer"), (reader, "read_only")]
    fd.guild.add_member(dev)
    fd.guild.add_member(reader)
    await world.start()
    assert (await says(world, "operator fleet", user=dev)).startswith("Jobs running: 0")
    assert await says(world, "operator fleet", user=reader) == NOT_OPERATOR


async def test_fleet_lists_the_processes_alive_from_their_heartbeats_with_their_shards(world: World) -> None:
    await start_with_operator(world)
    assert world.bot is not None
    me = world.bot.services.jobs.ownership.process_id
    # Another process on the same store, running shards 1 and 3, one heartbeat ago; and a dead one.
    now = time.time()
    await world.store.heartbeat("other-host:42:1.0", [1, 3], "9.9", now=now)
    await world.store.heartbeat("dead-host:7:1.0", [2], "9.9", now=now - 3600)
    lines = (await says(world, "operator fleet", user=operator_of(world))).splitlines()
    assert lines[0].startswith("Jobs running: 0 · queued: 0")
    assert f"Process `{me}`: alive, shards none (unsharded), 0 job(s)" in lines
    assert "Process `other-host:42:1.0`: alive, shards 1, 3, 0 job(s)" in lines
    assert not any("dead-host" in line for line in lines), "a stale heartbeat is not alive"


# --- the kill switch, access and caps ---------------------------------------------------------------------


async def test_the_kill_switch_stops_new_jobs_and_lets_running_ones_finish(world: World) -> None:
    await start_with_operator(world)
    fd, gw = world.fd, world.gw
    gw.configure(XAI, completion_delay=60)
    running_fi = await world.imagine("a slow comet", user=fd.alice, model=XAI)
    await gw.wait_for_request(lambda r: r.kind == "POST", timeout=WAIT)
    assert (await says(world, "operator pause", user=operator_of(world))).startswith("Generation is paused")

    refusal = await refused_imagine(world, "a new comet", user=fd.bob, model=GEMINI)
    assert refusal == "The bot's operator has paused image generation for now. Try again later; nothing was charged."
    assert [e for e in await ledger(world) if e[1] == fd.bob.id] == []  # type: ignore[union-attr]
    fleet = await says(world, "operator fleet", user=operator_of(world))
    assert fleet.startswith("Jobs running: 1 · queued: 0 · generation paused")

    job = await world.job_of(running_fi)
    assert job.operation_id is not None
    gw.complete(job.operation_id)
    assert (await world.finished(running_fi)).attachments
    assert (await world.store.get_job(job.id)).status == JobStatus.DELIVERED  # type: ignore[union-attr]

    assert (await says(world, "operator resume", user=operator_of(world))).startswith("Generation is running")
    assert (await deliver(world, "a new comet", user=fd.bob, model=GEMINI)).status == JobStatus.DELIVERED


async def test_an_allowlisted_bot_refuses_an_unapproved_server_until_the_operator_approves(world: World) -> None:
    await start_with_operator(world, guild_access="allowlist")
    refusal = await refused_imagine(world, "a lighthouse", user=world.fd.alice, model=GEMINI)
    assert refusal == ("The bot's operator has not approved this server for image generation yet. Nothing was charged.")
    assert await ledger(world) == []
    assert await world.store.active_jobs() == []

    gid = str(guild_id(world))
    assert (
        await says(world, "operator approve", {"server": gid}, user=operator_of(world)) == f"Server {gid} is approved."
    )
    assert (await deliver(world, "a lighthouse", user=world.fd.alice, model=GEMINI)).charged == 39


async def test_a_server_admin_cannot_raise_the_budget_above_the_operator_cap(world: World) -> None:
    await start_with_operator(world, operator_guild_cap=100, operator_guild_cap_period="month")
    content = await says(world, "budget set", {"amount": 1000, "period": "month"})
    assert content == (
        "`1000/month` is above the limit the bot's operator set for this server (100/month). Nothing was changed."
    )
    gid = guild_id(world)
    assert await world.store.recent_audit(gid, 10) == []
    assert await world.store.get_policy(gid) == GuildPolicy(guild_id=gid)
    # The operator's own cap for this server replaces the default; the admin may then go up to it.
    await says(world, "operator cap", {"server": str(gid), "period": "month", "amount": 2000}, user=operator_of(world))
    assert await says(world, "budget set", {"amount": 1000, "period": "month"}) == "Server budget: 1,000 per month."


async def test_a_member_refused_by_the_server_cap_is_told_which_cap_and_nothing_is_charged(world: World) -> None:
    await start_with_operator(world, operator_guild_cap=50, operator_guild_cap_period="day")
    await deliver(world, "one fox", user=world.fd.alice, model=GEMINI)
    refusal = await refused_imagine(world, "two foxes", user=world.fd.bob, model=GEMINI)
    assert refusal == (
        "This server has reached the limit the bot's operator set for it (11 credits left, 39 needed). "
        "Nothing was charged."
    )
    assert [e for e in await ledger(world) if e[1] == world.fd.bob.id] == []  # type: ignore[union-attr]


# --- alerts -------------------------------------------------------------------------------------------------


async def test_a_402_on_three_jobs_gives_one_operator_alert(world: World) -> None:
    fd = world.fd
    assert fd.guild is not None
    alerts = fd.guild.add_channel("bot-alerts")
    await start_with_operator(world, operator_alert_channel_id=alerts.id)
    world.gw.enqueue(Reply.error(402, "insufficient credits"), method="POST", times=3)
    for prompt in ("one", "two", "three"):
        fi = await world.imagine(f"{prompt} owl", user=fd.alice, model=GEMINI)
        assert (await world.job_of(fi)).status != JobStatus.DELIVERED
        await world.finished(fi)
    messages = fd.channel_messages(alerts.id)
    assert [m.content for m in messages] == [
        "⚠️ The image gateway's credits are used up (402). Jobs fail until you top them up."
    ]
    assert await ledger(world) == [
        (kind, fd.alice.id, 39)
        for _ in range(3)
        for kind in (EntryKind.HOLD, EntryKind.RELEASE)  # type: ignore[union-attr]
    ]


async def test_crossing_80_percent_of_the_budget_posts_one_message_to_the_log_channel(world: World) -> None:
    fd = world.fd
    assert fd.guild is not None
    log_channel = fd.guild.add_channel("bot-log")
    await start_with_operator(world)
    await says(world, "server logchannel", {"channel": log_channel})
    await says(world, "budget set", {"amount": 48, "period": "month"})

    def budget_notices() -> list[str]:
        return [m.content for m in fd.channel_messages(log_channel.id) if "of its budget" in m.content]

    await deliver(world, "a harbour", user=fd.alice, model=GEMINI)  # 39 of 48: 81 %
    await fd.wait_for(lambda: budget_notices() or None, WAIT, what="a budget notice")
    await deliver(world, "a small boat", user=fd.alice, model="gpt-image-1-mini")  # 47 of 48: 97 %, no new threshold
    assert budget_notices() == ["This server has spent 80 % of its budget: 39 of 48 credits this month."]
    audit = [m.content for m in fd.channel_messages(log_channel.id) if m.content.startswith("Admin change by")]
    assert len(audit) == 2
    assert audit[0].startswith(f"Admin change by <@{fd.admin.id}>: log channel set (`server.log_channel`) · ")
    assert audit[1].startswith(f"Admin change by <@{fd.admin.id}>: server setting changed (`policy.update`) · ")
    assert all(m.allowed_mentions == {"parse": []} for m in fd.channel_messages(log_channel.id))


# --- health and metrics -------------------------------------------------------------------------------------


async def get(url: str) -> tuple[int, str]:
    """GET once the server listens (it starts with the bot): retried only while the port refuses."""
    async with aiohttp.ClientSession() as session:
        deadline = asyncio.get_running_loop().time() + WAIT
        while True:
            try:
                async with session.get(url) as resp:
                    return resp.status, await resp.text()
            except aiohttp.ClientConnectorError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.02)


async def test_healthz_and_readyz_follow_the_connection_to_discord(world: World) -> None:
    port = FakeGateway.free_port()
    base = f"http://127.0.0.1:{port}"
    world.fd.ready_gate = gate = asyncio.Event()
    starting = asyncio.create_task(world.start(health_port=port))
    try:
        assert (await get(f"{base}/healthz"))[0] == 200
        status, body = await get(f"{base}/readyz")
        assert status == 503 and '"discord": false' in body
    finally:
        gate.set()
    await starting
    status, body = await get(f"{base}/readyz")
    assert status == 200, body
    assert '"discord": true' in body and '"store": true' in body and '"dispatching": true' in body


async def test_metrics_count_what_happened(world: World) -> None:
    port = FakeGateway.free_port()
    await start_with_operator(world, health_port=port)
    fd, gw = world.fd, world.gw
    gw.configure(XAI, completion_delay=0.3)
    fd.rate_limit_next("PATCH /webhooks/")  # discord.py waits and retries: the job still gets its images
    await deliver(world, "a secret garden prompt", user=fd.alice, model=GEMINI)
    await deliver(world, "another garden", user=fd.alice, model=GEMINI)
    async_job = await deliver(world, "a comet", user=fd.bob, model=XAI)
    gw.enqueue(Reply.error(402, "insufficient credits"), method="POST")
    failed = await world.imagine("a failing owl", user=fd.alice, model=GEMINI)
    await world.finished(failed)

    status, body = await get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert "garden" not in body and world.gw.api_key not in body and "owl" not in body
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("imagine_jobs_total", model=GEMINI, status="delivered") == 2
    assert value("imagine_jobs_total", model=GEMINI, status="failed") == 1
    assert value("imagine_jobs_total", model=XAI, status="delivered") == 1
    assert value("imagine_credits_held_total") == 39 * 3 + 20
    assert value("imagine_credits_captured_total") == 39 * 2 + 20
    assert value("imagine_gateway_requests_total", status="402") == 1
    exchanges = sum(1 for r in gw.requests if r.kind in ("POST", "POLL"))  # result downloads are not API calls
    assert value("imagine_gateway_requests_total", status="200") == exchanges - 1
    assert async_job.operation_id is not None
    assert value("imagine_polls_per_job_count", model=XAI) == 1
    assert value("imagine_polls_per_job_sum", model=XAI) == gw.polls_of(async_job.operation_id)
    assert value("imagine_generation_seconds_count", model=GEMINI) == 2
    assert value("imagine_detection_lag_seconds_count", model=XAI) == 1
    assert value("imagine_event_loop_lag_seconds_count") >= 0
    assert value("imagine_discord_rate_limited_total") == 1


async def test_a_server_id_that_is_not_one_is_refused_and_nothing_is_written(world: World) -> None:
    await start_with_operator(world)
    content = await says(world, "operator approve", {"server": "my server"}, user=operator_of(world))
    assert content == "`my server` is not a server id."
    options = {"server": "서버", "period": "day"}
    korean = await world.command("operator cap", options, user=operator_of(world), locale="ko")
    assert korean.callback is not None and korean.callback.data is not None
    assert korean.callback.data["content"] == "`서버`은(는) 서버 ID가 아니에요."
    assert await world.store.all_guild_ops() == []


async def test_spend_and_caps_show_what_the_operator_set_and_what_was_spent(world: World) -> None:
    await start_with_operator(world, operator_daily_cap=1000, guild_access="allowlist")
    gid = guild_id(world)
    operator = operator_of(world)
    await says(world, "operator approve", {"server": str(gid)}, user=operator)
    await says(world, "operator cap", {"server": str(gid), "period": "week", "amount": 300}, user=operator)
    await deliver(world, "a harbour", user=world.fd.alice, model=GEMINI)
    await deliver(world, "a boat", user=world.fd.bob, model="gpt-image-1-mini")

    spend = (await says(world, "operator spend", user=operator)).splitlines()
    assert spend[0] == "Spend: 47 credits today, 47 this month (UTC) · 0 held now"
    assert f"`{gid}` · 47 / 47" in spend
    assert f"`{GEMINI}` · 39 / 39" in spend and "`gpt-image-1-mini` · 8 / 8" in spend
    caps = (await says(world, "operator caps", user=operator)).splitlines()
    assert caps == [
        "Bot: 1,000 per day, none per month (UTC) · default per server: none · access: allowlist",
        f"Server {gid}: cap 300/week · approved",
    ]
