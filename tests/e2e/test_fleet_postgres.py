"""Two real bot processes, one shard each, on one PostgreSQL database (a throwaway one per test), against
the sharded fake Discord and the fake gateway: a job of a process killed with SIGKILL is taken over by the
other once its lease expires and delivered and charged once; a Cancel clicked through one process reaches a
job the other owns; /credits answered by one process sees the other's holds.

Skipped with the reason when PostgreSQL is unreachable; with REQUIRE_POSTGRES=1 it fails instead."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bot.store import open_store
from bot.store.base import Store
from bot.store.records import EntryKind, JobRecord, JobStatus
from tests.conftest import PG_DSN, pg_admin, require_postgres
from tests.e2e.harness import WAIT, World, button, status_line, visible
from tests.e2e.test_sharding import START, all_ready, free_port, stop

ASYNC_MODEL, ASYNC_PRICE = "xai/grok-imagine-image", 20
LEASE = dict(job_lease_seconds=1.5, heartbeat_seconds=0.3)  # a dead process is found within seconds


@pytest.fixture
async def pg_url(world: World) -> AsyncIterator[str]:
    """A fresh PostgreSQL database for both processes, dropped after the test."""
    await require_postgres()
    name = f"e2e_{uuid.uuid4().hex[:16]}"
    await pg_admin(f"CREATE DATABASE {name}")
    try:
        yield PG_DSN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def start_two(world: World, url: str, **per_process: dict[str, Any]) -> list[asyncio.subprocess.Process]:
    """Processes "a" (shard 0) and "b" (shard 1) on `url`, ready; `per_process` adds settings to one."""
    ports = [free_port(), free_port()]
    started = list(
        await asyncio.gather(
            *(
                world.start_process(
                    dev_guild_id=None,
                    shard_count=2,
                    shard_ids=str(shard),
                    health_port=ports[shard],
                    database_url=url,
                    **LEASE,
                    **per_process.get(name, {}),
                )
                for shard, name in ((0, "a"), (1, "b"))
            )
        )
    )
    await all_ready(started, ports)
    return started


async def until(what: str, check: Callable[[], Awaitable[Any]], timeout: float = WAIT) -> Any:
    """Ask `check` until it gives something truthy (a store condition has no event to wait on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (found := await check()):
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)  # between two asks of a condition; the deadline bounds it
    return found


async def the_job(store: Store, guild_id: int, user_id: int) -> JobRecord:
    return await until("the job's row", lambda: _latest(store, guild_id, user_id))


async def _latest(store: Store, guild_id: int, user_id: int) -> JobRecord | None:
    jobs = await store.recent_jobs(guild_id, user_id, 1)
    return jobs[0] if jobs else None


async def ledger_of(store: Store, job: JobRecord) -> dict[EntryKind, int]:
    totals: dict[EntryKind, int] = {}
    for entry in await store.ledger_entries(job.guild_id, 0, 1e12):
        if entry.job_id == job.id:
            totals[entry.kind] = totals.get(entry.kind, 0) + entry.amount
    return totals


async def test_a_job_of_a_process_killed_mid_poll_is_taken_over_and_delivered_once(
    world: World, pg_url: str
) -> None:
    fd = world.fd
    on_0 = fd.guild_on_shard(0, 2)
    world.gw.configure(ASYNC_MODEL, completion_delay=3600)
    a, b = await start_two(world, pg_url)
    store = open_store(pg_url)
    await store.open()
    try:
        fi = await fd.send_slash_command("imagine", {"prompt": "a slow tide", "model": ASYNC_MODEL}, guild_id=on_0.id)
        assert fi.shard == (0, 2), "answered by process a"
        await world.gw.wait_for_request(lambda r: r.kind == "POLL", timeout=START)
        job = await the_job(store, on_0.id, fd.alice.id)
        first_owner = job.owner
        assert first_owner and job.status == JobStatus.POLLING

        a.kill()  # SIGKILL mid-poll: no shutdown, no give-back
        await a.wait()

        async def taken_over() -> JobRecord | None:
            now = await store.get_job(job.id)
            return now if now is not None and now.owner not in (None, first_owner) else None

        taken = await until("process b to take the job over", taken_over, START)
        assert taken.status == JobStatus.POLLING and taken.operation_id == job.operation_id
        assert job.operation_id is not None
        world.gw.complete(job.operation_id)
        final = await fi.wait_for_message_state(lambda m: len(m.attachments) == 1, WAIT)
        assert final.attachments[0].is_png

        async def settled() -> JobRecord | None:
            now = await store.get_job(job.id)
            return now if now is not None and now.is_terminal else None

        done = await until("the job to be settled", settled)
        assert done.status == JobStatus.DELIVERED and done.owner == taken.owner
        assert len(world.gw.posts) == 1, "submitted once: b resumed the poll, it did not submit again"
        assert await ledger_of(store, job) == {EntryKind.HOLD: ASYNC_PRICE, EntryKind.CAPTURE: ASYNC_PRICE}
        assert sum(1 for edit in fi.edits if edit.attachments) == 1, "delivered once"
    finally:
        await store.close()
        await asyncio.gather(stop(a), stop(b))


async def test_a_cancel_clicked_through_one_process_settles_the_job_the_other_owns_once(
    world: World, pg_url: str
) -> None:
    fd = world.fd
    on_0, on_1 = fd.guild_on_shard(0, 2), fd.guild_on_shard(1, 2)
    world.gw.configure(ASYNC_MODEL, completion_delay=3600)
    # b may run one job at once in the whole bot, a many: with a's blocker running, only a can claim
    # the job b queues. So a owns a job whose messages and clicks reach b.
    a, b = await start_two(world, pg_url, b=dict(max_jobs_global=1))
    store = open_store(pg_url)
    await store.open()
    try:
        blocker_fi = await fd.send_slash_command(
            "imagine", {"prompt": "the blocker", "model": ASYNC_MODEL}, guild_id=on_0.id, user=fd.bob
        )
        await world.gw.wait_for_request(lambda r: r.kind == "POLL", timeout=START)
        blocker = await the_job(store, on_0.id, fd.bob.id)

        fi = await fd.send_slash_command("imagine", {"prompt": "a far tide", "model": ASYNC_MODEL}, guild_id=on_1.id)
        assert fi.shard == (1, 2), "asked through process b"
        message = await fi.wait_for_message_state(lambda m: status_line(m).startswith("Generating"), START)
        job = await the_job(store, on_1.id, fd.alice.id)
        assert job.owner == blocker.owner, "claimed by process a"

        credits = await fd.send_slash_command("credits", {}, guild_id=on_1.id)
        assert credits.shard == (1, 2)
        shown = visible((await credits.wait_for_callback(WAIT)).data)
        held_at = shown.index("Held for running jobs")
        assert shown[held_at + 1] == str(ASYNC_PRICE), "b sees the hold of the job a runs"

        click = await fd.click_button(message, button(message, "cancel"), user=fd.alice)
        assert click.shard == (1, 2), "clicked through process b"
        await click.wait_for_callback(WAIT)
        await fi.wait_for_message_state(lambda m: status_line(m).startswith("Cancelled"), START)

        async def settled() -> JobRecord | None:
            now = await store.get_job(job.id)
            return now if now is not None and now.is_terminal else None

        done = await until("the job to be settled", settled)
        assert done.status == JobStatus.CANCELLED and done.owner == blocker.owner, "settled by its owner, a"
        assert await ledger_of(store, job) == {EntryKind.HOLD: ASYNC_PRICE, EntryKind.RELEASE: ASYNC_PRICE}
        cancelled = [e for e in fi.edits if status_line(e).startswith("Cancelled")]
        assert cancelled, "the member is told"
        still = await store.get_job(blocker.id)
        assert still is not None and still.status == JobStatus.POLLING, "the other job goes on"
        assert blocker_fi.message is not None
    finally:
        await store.close()
        await asyncio.gather(stop(a), stop(b))
