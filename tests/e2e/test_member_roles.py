"""A delivery reads the member's roles from the command they sent, not from Discord (issue 10): Discord's
member route is a bot-token route, and a burst of deliveries asking it would run past the global limit.
Only jobs resumed after a restart ask, once per member. Real discord.py client, fake Discord, fake gateway."""

from __future__ import annotations

import asyncio
import time

from bot.credits.ledger import Allowance
from bot.store.records import JobStatus
from tests.e2e.harness import WAIT, World, status_line
from tests.fakes.fake_discord import FakeMember

ASYNC_MODEL, ASYNC_PRICE = "xai/grok-imagine-image", 20
ROLE_ALLOWANCE = 300  # not the default (500): the status line tells which allowance applied
MEMBER_ROUTE = "GET /guilds/{guild_id}/members/{user_id}"


async def _patron(world: World) -> FakeMember:
    """alice, with a role whose allowance differs from the bot's default."""
    guild = world.fd.guild
    assert guild is not None
    patrons = guild.add_role("Patrons")
    alice: FakeMember = world.fd.alice  # type: ignore[assignment]
    alice.roles += [patrons.id]
    store = await world.open_store()
    try:
        await store.set_role_allowance(
            guild.id, patrons.id, Allowance(ROLE_ALLOWANCE, "month"), actor_id=1, now=time.time()
        )
    finally:
        await store.close()
    return alice


def _member_lookups(world: World, since: int) -> int:
    return sum(1 for r in world.fd.requests[since:] if f"{r.method} {r.route}" == MEMBER_ROUTE)


async def test_deliveries_use_the_roles_the_command_carried(world: World) -> None:
    alice = await _patron(world)
    await world.start()
    since = len(world.fd.requests)
    jobs = 6
    interactions = await asyncio.gather(
        *(world.imagine(f"lantern {i}", user=alice.user, model=ASYNC_MODEL) for i in range(jobs))
    )
    messages = [await world.finished(fi) for fi in interactions]

    assert all(m.attachments for m in messages)
    assert _member_lookups(world, since) == 0, "no delivery asked Discord for the member"
    # The role's allowance applied (every job was held at submit, so each shows the same balance).
    left = [int(status_line(m).split("·")[-1].split()[0]) for m in messages]
    assert left == [ROLE_ALLOWANCE - jobs * ASYNC_PRICE] * jobs


async def test_a_resumed_job_asks_discord_once_per_member(world: World) -> None:
    alice = await _patron(world)
    await world.start()
    world.gw.configure(ASYNC_MODEL, completion_delay=3600)
    interactions = [await world.imagine(f"harbour {i}", user=alice.user, model=ASYNC_MODEL) for i in range(2)]
    jobs = [await world.job_of(fi) for fi in interactions]
    await world.gw.wait_for_request(lambda r: r.kind == "POLL" and len(world.gw.operations) == 2, timeout=WAIT)
    await world.stop()  # both jobs stay in the database, mid-poll

    store = await world.open_store()
    stored = [await store.get_job(job.id) for job in jobs]
    await store.close()
    assert all(s is not None and s.status == JobStatus.POLLING and s.operation_id for s in stored)

    await world.start()
    since = len(world.fd.requests)
    for job in stored:
        assert job is not None and job.operation_id is not None
        world.gw.complete(job.operation_id)
    messages = [await world.finished(fi) for fi in interactions]

    assert all(m.attachments for m in messages)
    assert _member_lookups(world, since) == 1, "two resumed jobs of one member: one look-up"
    left = [int(status_line(m).split("·")[-1].split()[0]) for m in messages]
    assert left == [ROLE_ALLOWANCE - 2 * ASYNC_PRICE] * 2, "the role found after the restart applied"
