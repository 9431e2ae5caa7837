"""Two real bot processes, one shard each (SHARD_COUNT=2), on one SQLite file against the sharded fake
Discord: each gets only its shard's servers, commands and clicks reach the process of their server's
shard, jobs are delivered, and the slash commands are synced once for both."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from discord.ext import commands

from bot.discord_app import ImagineBot
from bot.store.records import Allowance, EntryKind, JobStatus
from tests.e2e.harness import WAIT, World, button, status_line, visible
from tests.fakes.fake_discord import CallbackType, FakeGuild

ASYNC_MODEL, ASYNC_PRICE = "xai/grok-imagine-image", 20
SYNC_MODEL = "gemini-2.5-flash-image"
START = 90.0  # two processes importing and starting at once on a shared machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_ready(port: int, process: asyncio.subprocess.Process) -> None:
    """Wait until the process's /readyz says it takes jobs (connected, store answers, dispatching)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START
    async with aiohttp.ClientSession() as http:
        while True:
            assert process.returncode is None, f"the bot process exited with {process.returncode}"
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/readyz") as answer:
                    if answer.status == 200:
                        return
            assert loop.time() < deadline, "the bot process did not become ready"
            await asyncio.sleep(0.1)  # between two asks of a condition; the deadline bounds it


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def processes(world: World) -> AsyncIterator[tuple[list[asyncio.subprocess.Process], list[int]]]:
    """Both processes started at the same moment, each with its own shard; commands synced globally.
    Yields them and their health ports; SIGTERM on exit."""
    ports = [free_port(), free_port()]
    started = await asyncio.gather(
        *(
            world.start_process(dev_guild_id=None, shard_count=2, shard_ids=str(shard), health_port=ports[shard])
            for shard in (0, 1)
        )
    )
    try:
        yield list(started), ports
    finally:
        await asyncio.gather(*(stop(process) for process in started))


async def all_ready(started: list[asyncio.subprocess.Process], ports: list[int]) -> None:
    await asyncio.gather(*(wait_ready(port, process) for port, process in zip(ports, started, strict=True)))


@pytest.fixture
async def fleet(world: World) -> AsyncIterator[tuple[World, FakeGuild, FakeGuild]]:
    on_0, on_1 = world.fd.guild_on_shard(0, 2), world.fd.guild_on_shard(1, 2)
    async with processes(world) as (started, ports):
        await all_ready(started, ports)
        yield world, on_0, on_1


async def test_each_process_connects_only_its_shard_and_gets_only_its_servers(
    fleet: tuple[World, FakeGuild, FakeGuild],
) -> None:
    world, on_0, on_1 = fleet
    fd = world.fd
    assert sorted(payload["shard"] for payload in fd.identify_payloads) == [[0, 2], [1, 2]], "one shard each"
    for shard_id, guild in ((0, on_0), (1, on_1)):
        session = fd.sessions[(shard_id, 2)]
        mine = {g.id for g in fd.guilds.values() if (g.id >> 22) % 2 == shard_id}
        assert guild.id in mine
        created = {
            int(frame.split('"id": "', 1)[1].split('"', 1)[0])
            for _, frame in session.sent
            if '"t": "GUILD_CREATE"' in frame
        }
        assert created == mine


async def test_commands_are_synced_once_for_both_processes(world: World) -> None:
    fd = world.fd
    # The first process's sync waits at Discord: the other must go on to connect without syncing too.
    syncs = fd.hold_requests(lambda r: r.method == "PUT" and r.route.endswith("/commands"))
    async with processes(world) as (started, ports):
        await fd.wait_for(lambda: syncs.hits >= 1 and fd.identify_count >= 1, START, what="one syncs, one connects")
        syncs.release()
        await all_ready(started, ports)
        assert fd.identify_count == 2
        assert syncs.hits == 1 and len(fd.requests_to(r"^PUT /applications/\d+/commands$")) == 1
        assert [sync.guild_id for sync in fd.command_syncs] == [None]
        assert fd.find_command("imagine") is not None


async def test_imagine_on_shard_1_is_answered_by_its_process_and_delivered(
    fleet: tuple[World, FakeGuild, FakeGuild],
) -> None:
    world, _, on_1 = fleet
    fd = world.fd
    fi = await fd.send_slash_command("imagine", {"prompt": "a lighthouse", "model": SYNC_MODEL}, guild_id=on_1.id)
    assert fi.shard == (1, 2), "dispatched only on shard 1's connection, which only the second process holds"
    assert (await fi.wait_for_callback(WAIT)).type == CallbackType.DEFERRED_CHANNEL_MESSAGE
    final = await fi.wait_for_message_state(lambda m: len(m.attachments) == 1, WAIT)
    assert final.attachments[0].is_png


async def test_a_members_cancel_on_shard_1_is_answered_by_its_process_and_settles_the_job(
    fleet: tuple[World, FakeGuild, FakeGuild],
) -> None:
    world, _, on_1 = fleet
    fd = world.fd
    world.gw.configure(ASYNC_MODEL, completion_delay=3600)
    fi = await fd.send_slash_command("imagine", {"prompt": "a slow tide", "model": ASYNC_MODEL}, guild_id=on_1.id)
    message = await fi.wait_for_message_state(lambda m: status_line(m).startswith("Generating"), WAIT)
    click = await fd.click_button(message, button(message, "cancel"), user=fd.alice)
    assert click.shard == (1, 2)
    assert (await click.wait_for_callback(WAIT)).type == CallbackType.DEFERRED_UPDATE_MESSAGE
    await fi.wait_for_message_state(lambda m: status_line(m).startswith("Cancelled"), WAIT)

    store = await world.open_store()
    try:
        (job,) = await store.recent_jobs(on_1.id, fd.alice.id, 5)
        assert job.status == JobStatus.CANCELLED
        totals: dict[EntryKind, int] = {}
        for entry in await store.ledger_entries(on_1.id, 0, 1e12):
            totals[entry.kind] = totals.get(entry.kind, 0) + entry.amount
        assert totals == {EntryKind.HOLD: ASYNC_PRICE, EntryKind.RELEASE: ASYNC_PRICE}
    finally:
        await store.close()


def has_hangul(pieces: list[str]) -> bool:
    return any("\uac00" <= ch <= "\ud7a3" for piece in pieces for ch in piece)


async def test_a_process_without_the_servers_shard_finishes_its_job_through_the_channel(world: World) -> None:
    # Started by the process of shard 1; its token expires; that process stops; a process that holds only
    # shard 0 (so the server is not in its cache) resumes the job and posts it through the channel, in the
    # server's language (Korean, known only from the guild fetched over REST).
    # Alice's allowance comes from a role: the balance shown with the result needs her roles over REST too.
    fd = world.fd
    korean = fd.guild_on_shard(1, 2, preferred_locale="ko")
    painters = korean.add_role("painters")
    korean.members[fd.alice.id].roles.append(painters.id)
    store = await world.open_store()
    try:
        await store.set_role_allowance(
            korean.id, painters.id, Allowance(1000, "month"), actor_id=korean.owner_id, now=time.time()
        )
    finally:
        await store.close()
    world.gw.configure(ASYNC_MODEL, completion_delay=3600)
    await world.start(dev_guild_id=None, shard_count=2, shard_ids="1")
    fi = await fd.send_slash_command("imagine", {"prompt": "a slow tide", "model": ASYNC_MODEL}, guild_id=korean.id)
    job = await world.job_of(fi)
    await world.gw.wait_for_request(lambda r: r.kind == "POLL", timeout=WAIT)
    fi.expire()
    await world.stop()

    bot = await world.start(dev_guild_id=None, shard_count=2, shard_ids="0")
    assert bot.get_guild(korean.id) is None, "the server is on the other shard"
    for operation in world.gw.operations:
        world.gw.complete(operation)
    final = await world.finished(fi)
    assert len(final.attachments) == 1
    assert has_hangul(visible(final)), "posted in the server's language"
    assert any(str(1000 - ASYNC_PRICE) in piece for piece in visible(final)), "the role's allowance, less this job"
    channel = korean.text_channels[0]
    assert fd.requests_to(rf"^PATCH /channels/{channel.id}/messages/{final.id}$"), "through the channel"
    assert await world.ledger_of(job.id) == {EntryKind.HOLD: ASYNC_PRICE, EntryKind.CAPTURE: ASYNC_PRICE}


async def test_without_shard_settings_the_bot_stays_one_unsharded_client(world: World) -> None:
    bot = await world.start()
    assert not isinstance(bot, commands.AutoShardedBot)
    assert "shard" not in world.fd.identify_payloads[-1]
    await world.stop()
    sharded = await world.start(shard_count=2, shard_ids="0,1")
    assert isinstance(sharded, commands.AutoShardedBot) and isinstance(sharded, ImagineBot)
    assert sorted(payload["shard"] for payload in world.fd.identify_payloads[1:]) == [[0, 2], [1, 2]]
