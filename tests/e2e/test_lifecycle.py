"""A job's books in the interleavings real servers produce: long downtimes, crashes between posting and
settling, double clicks, cancels racing the dispatcher, rate-limited edits, floods. Real discord.py client,
fake Discord, fake gateway."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from bot.credits.ledger import Ledger
from bot.generation.catalog import Catalog
from bot.store.records import Allowance, EntryKind, JobStatus
from tests.e2e.harness import WAIT, World, button, status_line
from tests.factories import make_job
from tests.fakes.fake_discord import CallbackType, FakeDiscord, FakeInteraction
from tests.fakes.fake_gateway import FakeGateway, Reply

ASYNC_MODEL, ASYNC_PRICE = "xai/grok-imagine-image", 20
SYNC_MODEL, SYNC_PRICE = "gemini-2.5-flash-image", 39


async def _down_for_two_hours_mid_poll(world: World, prompt: str) -> tuple[FakeInteraction, str, str]:
    """Start an async job, stop the bot while it polls, and age the job past any poll deadline.

    Returns the interaction, the job id and the gateway's operation id.
    """
    world.gw.configure(ASYNC_MODEL, completion_delay=3600)
    fi = await world.imagine(prompt, model=ASYNC_MODEL)
    job = await world.job_of(fi)
    await world.gw.wait_for_request(lambda r: r.kind == "POLL", timeout=WAIT)
    await world.stop()
    store = await world.open_store()
    try:
        stored = await store.get_job(job.id)
        assert stored is not None and stored.operation_id and stored.submitted_at
        await store.update_job(job.id, submitted_at=stored.submitted_at - 7200)
    finally:
        await store.close()
    return fi, job.id, stored.operation_id


async def test_a_job_that_finished_during_a_long_downtime_is_delivered_once(world: World) -> None:
    await world.start(poll_deadline_seconds=60)
    fi, job_id, operation = await _down_for_two_hours_mid_poll(world, "a lighthouse")
    polls_before = world.gw.polls_of(operation)
    world.gw.complete(operation)  # it finished while the bot was down

    await world.start(poll_deadline_seconds=60)
    message = await world.finished(fi)
    assert len(message.attachments) == 1, "delivered, not failed unseen"
    assert world.gw.polls_of(operation) > polls_before, "polled again after the restart"
    assert len(world.gw.posts) == 1
    assert await world.ledger_of(job_id) == {EntryKind.HOLD: ASYNC_PRICE, EntryKind.CAPTURE: ASYNC_PRICE}


async def test_a_job_still_running_after_a_long_downtime_gets_the_deadline_from_the_restart(world: World) -> None:
    await world.start(poll_deadline_seconds=60)
    fi, job_id, operation = await _down_for_two_hours_mid_poll(world, "a slow comet")
    polls_before = world.gw.polls_of(operation)

    await world.start(poll_deadline_seconds=60)
    await world.fd.wait_for(lambda: world.gw.polls_of(operation) >= polls_before + 2, WAIT, what="polled twice")
    job = await world.store.get_job(job_id)
    assert job is not None and job.status == JobStatus.POLLING, "still running: it keeps polling"
    world.gw.complete(operation)
    message = await world.finished(fi)
    assert len(message.attachments) == 1 and world.gw.polls_of(operation) > polls_before + 1
    assert await world.ledger_of(job_id) == {EntryKind.HOLD: ASYNC_PRICE, EntryKind.CAPTURE: ASYNC_PRICE}


async def test_a_job_the_gateway_forgot_during_a_downtime_is_refunded_and_explained(world: World) -> None:
    await world.start(poll_deadline_seconds=60)
    fi, job_id, operation = await _down_for_two_hours_mid_poll(world, "a lost letter")
    world.gw.forget(operation)

    await world.start(poll_deadline_seconds=60)
    message = await world.finished(fi)
    assert "no longer knows this request" in status_line(message)
    assert await world.ledger_of(job_id) == {EntryKind.HOLD: ASYNC_PRICE, EntryKind.RELEASE: ASYNC_PRICE}


async def test_cancel_is_acknowledged_while_discord_holds_the_replys_edits(running: World) -> None:
    running.gw.configure(ASYNC_MODEL, completion_delay=3600)
    fi = await running.imagine("a slow river", model=ASYNC_MODEL)
    message = await fi.wait_for_message_state(lambda m: status_line(m).startswith("Generating"), WAIT)
    job = await running.job_of(fi)
    # Discord stops answering edits of the reply (its rate-limit bucket is empty for a long while).
    edits = running.fd.hold_requests(lambda r: r.method == "PATCH" and "/messages/" in r.path)
    click = await running.fd.click_button(message, button(message, "cancel"), user=running.fd.alice)
    ack = await click.wait_for_callback(WAIT)
    assert ack.type == CallbackType.DEFERRED_UPDATE_MESSAGE, "answered while the edits still wait"
    assert not edits.released.is_set()
    edits.release()
    assert status_line(await running.finished(fi)).startswith("Cancelled")
    assert await running.ledger_of(job.id) == {EntryKind.HOLD: ASYNC_PRICE, EntryKind.RELEASE: ASYNC_PRICE}


async def test_a_burst_of_requests_queues_at_most_max_queued_per_member(running: World) -> None:
    running.gw.configure(ASYNC_MODEL, completion_delay=3600)
    # 25 × 20 credits is exactly the default allowance: only the queue limit (default 10) can refuse.
    burst = await asyncio.gather(*(running.imagine(f"fox {i}", model=ASYNC_MODEL) for i in range(25)))
    answers = await asyncio.gather(*(fi.wait_for_callback(WAIT) for fi in burst))
    accepted = [a for a in answers if a.type == CallbackType.DEFERRED_CHANNEL_MESSAGE]
    refused = [a for a in answers if a.type == CallbackType.CHANNEL_MESSAGE]
    assert len(accepted) == 10 and len(refused) == 15
    assert all(a.ephemeral and "already have 10 requests queued or running" in a.data["content"] for a in refused)
    active = await running.store.active_jobs()
    assert len(active) == 10, "running jobs count towards the limit too"
    balance = await running.bot.services.ledger.balance(running.fd.guild.id, running.fd.alice.id, [])  # type: ignore[union-attr]
    assert balance.held == 10 * ASYNC_PRICE, "nothing held for a refused request"


async def test_two_confirm_clicks_arriving_together_hold_and_generate_once(world: World) -> None:
    await world.start(quote_threshold=50)
    world.gw.configure(SYNC_MODEL, sync_delay=0.5)
    fi = await world.imagine("two foxes", model=SYNC_MODEL, count=2)
    quote = await fi.wait_for_callback(WAIT)
    confirm_id = quote.data["components"][0]["components"][0]["custom_id"]
    clicks = await asyncio.gather(
        *(world.fd.click_button(fi.message, confirm_id, user=world.fd.alice) for _ in range(2))
    )
    answers = await asyncio.gather(*(click.wait_for_callback(WAIT) for click in clicks))
    second = [a for a in answers if a.type == CallbackType.CHANNEL_MESSAGE]
    assert len(second) == 1 and second[0].ephemeral and "already confirmed" in second[0].data["content"]
    (first,) = [c for c, a in zip(clicks, answers, strict=True) if a.type == CallbackType.UPDATE_MESSAGE]
    reply = await first.wait_for_followup(lambda m: not m.ephemeral, WAIT)
    await world.fd.wait_for(lambda: len(reply.attachments) == 2, WAIT, what="images delivered")
    (job,) = await world.store.recent_jobs(world.fd.guild.id, world.fd.alice.id, 5)
    assert world.bot is not None
    await asyncio.wait_for(world.bot.services.jobs.join(job.id), WAIT)
    assert len(world.gw.posts) == 1, "generated once"
    assert await world.ledger_of(job.id) == {EntryKind.HOLD: 78, EntryKind.CAPTURE: 78}


async def test_the_quote_refusal_never_shows_a_negative_balance(world: World) -> None:
    await world.start(quote_threshold=50)
    deduct = {"member": world.fd.alice, "amount": 600, "reason": "chargeback"}
    await world.command("quota deduct", deduct, user=world.fd.admin)  # 500 − 600: overdrawn
    quoted = await world.imagine("two foxes", model=SYNC_MODEL, count=2)  # 78: above the threshold
    held = await world.imagine("one fox", model=SYNC_MODEL)  # 39: straight to the hold
    for fi, needed in ((quoted, 78), (held, 39)):
        refusal = await fi.wait_for_callback(WAIT)
        expected = f"This needs {needed} credits and you have 0 available. Nothing was charged."
        assert refusal.ephemeral and refusal.data["content"] == expected
    assert world.gw.posts == [] and await world.store.active_jobs() == []


async def test_a_finished_job_keeps_no_interaction_token(running: World) -> None:
    delivered_fi = await running.imagine("a kept secret", model=SYNC_MODEL)
    await running.finished(delivered_fi)
    running.gw.enqueue(Reply.error(500, "boom"), method="POST")
    failed_fi = await running.imagine("a failed secret", model=SYNC_MODEL)
    failed = await running.finished(failed_fi)
    assert status_line(failed).startswith("Failed")
    assert failed_fi.message is not None
    by_channel = [r for r in running.fd.requests if r.method == "PATCH" and r.path.startswith("/channels/")]
    assert not any(r.path.endswith(f"/{failed_fi.message.id}") for r in by_channel), (
        "the failure edit still went through the interaction webhook"
    )
    for fi in (delivered_fi, failed_fi):
        job = await running.job_of(fi)
        assert job.is_terminal and job.interaction_token is None


@pytest.fixture
def crash_before_settling(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Make the next delivered settlement hang, as if the process died right after posting.

    Returns an event set once a settlement is hanging; the bot's stop then cuts the job off.
    """
    hanging = asyncio.Event()
    original = Ledger.settle

    async def settle(self: Ledger, job_id: str, status: JobStatus, **kwargs: Any) -> Any:
        if status == JobStatus.DELIVERED and not hanging.is_set():
            hanging.set()
            await asyncio.Event().wait()  # never returns: cancelled by the shutdown
        return await original(self, job_id, status, **kwargs)

    monkeypatch.setattr(Ledger, "settle", settle)
    return hanging


def _burst_catalog(tmp_path: Path) -> Path:
    catalog_file = tmp_path / "models.json"
    catalog_file.write_text(
        json.dumps(
            {
                "aspect_ratios": ["1:1"],
                "models": [{"name": "house-burst", "provider": "Google", "price": 2, "mode": "sync", "max_images": 12}],
            }
        )
    )
    return catalog_file


async def test_a_crash_after_posting_twelve_images_captures_twelve(
    tmp_path: Path, crash_before_settling: asyncio.Event
) -> None:
    catalog_file = _burst_catalog(tmp_path)
    async with FakeDiscord() as fd, FakeGateway(catalog=Catalog.load(catalog_file)) as gw:
        world = World(fd=fd, gw=gw, tmp=tmp_path, overrides={"model_catalog_path": str(catalog_file)})
        try:
            await world.start(default_model="house-burst")
            fi = await world.imagine("a flock of birds", model="house-burst", count=12)
            await asyncio.wait_for(crash_before_settling.wait(), WAIT)
            job = await world.job_of(fi)
            await world.stop()  # the process dies between posting 12 images and settling

            await world.start(default_model="house-burst")
            settled = await world.store.get_job(job.id)
            assert settled is not None and settled.status == JobStatus.DELIVERED
            assert settled.delivered_count == 12 and settled.charged == 24
            assert await world.ledger_of(job.id) == {EntryKind.HOLD: 24, EntryKind.CAPTURE: 24}
            assert sum(1 for edit in fi.edits if edit.attachments) == 1 and len(fi.followups) == 1, "not reposted"
        finally:
            await world.stop()


async def test_a_crash_before_recording_what_was_posted_is_settled_from_the_reply(
    world: World, crash_before_settling: asyncio.Event
) -> None:
    # Recovery through the real Discord presenter: the reply's attachments are what the member sees.
    await world.start()
    fi = await world.imagine("one kept image", model=SYNC_MODEL)
    await asyncio.wait_for(crash_before_settling.wait(), WAIT)
    job = await world.job_of(fi)
    await world.stop()
    store = await world.open_store()
    try:
        await store.update_job(job.id, posted_count=0)  # died between posting and recording it
    finally:
        await store.close()

    await world.start()
    settled = await world.store.get_job(job.id)
    assert settled is not None and settled.status == JobStatus.DELIVERED and settled.delivered_count == 1
    assert await world.ledger_of(job.id) == {EntryKind.HOLD: SYNC_PRICE, EntryKind.CAPTURE: SYNC_PRICE}
    assert sum(1 for edit in fi.edits if edit.attachments) == 1, "not posted a second time"
    assert len(world.gw.posts) == 1


async def test_a_recovery_failure_is_retried_and_never_strands_credits(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bot.jobs.service.UNACKNOWLEDGED_AFTER", 0.05)
    await world.start()
    world.gw.configure(ASYNC_MODEL, completion_delay=3600)
    first_fi = await world.imagine("first", model=ASYNC_MODEL)
    first = await world.job_of(first_fi)
    second_fi = await world.imagine("second", model=ASYNC_MODEL)
    second = await world.job_of(second_fi)
    await world.fd.wait_for(lambda: len(world.gw.polls) >= 2, WAIT, what="both polling")
    await world.stop()
    store = await world.open_store()
    try:
        for job in (first, second):  # both crashed while posting their images
            await store.update_job(job.id, status=JobStatus.DELIVERING)
        # And a hold whose member was never answered (the process died before acknowledging).
        ledger = Ledger(store, default_allowance=Allowance(500, "month"))
        orphan = await ledger.hold_for_job(make_job(guild_id=first.guild_id, user_id=first.user_id, price=5), [])
    finally:
        await store.close()
    for operation in world.gw.operations:
        world.gw.complete(operation)
    # Discord's connection breaks each time recovery asks about the first job's reply.
    assert first.reply_message_id is not None
    broken = world.fd.drop_connections(
        lambda r: r.method == "GET" and r.path.endswith(f"/messages/{first.reply_message_id}"), times=None
    )

    bot = await world.start(wait_for_jobs=False)
    assert len((await world.finished(second_fi)).attachments) == 1, "the other job is recovered"
    await world.fd.wait_for(lambda: broken.hits >= 2, WAIT, what="start retried")
    released = await world.store.get_job(orphan.id)
    assert released is not None and released.status == JobStatus.FAILED, "unacknowledged hold released"
    assert not bot.services.jobs.dispatching
    refused = await world.imagine("while starting", model=SYNC_MODEL)
    answer = await refused.wait_for_callback(WAIT)
    assert answer.ephemeral and "still starting up" in answer.data["content"]
    assert {j.id for j in await world.store.active_jobs()} == {first.id}, "nothing held for the refused one"

    broken.remove()  # Discord is back: the next attempt recovers the first job and dispatching starts
    await asyncio.wait_for(bot.services.jobs.wait_started(), WAIT)
    assert len((await world.finished(first_fi)).attachments) == 1
    for job in (first, second):
        assert await world.ledger_of(job.id) == {EntryKind.HOLD: ASYNC_PRICE, EntryKind.CAPTURE: ASYNC_PRICE}
    assert len(world.gw.posts) == 2


async def test_sigterm_exits_within_10_s_even_with_an_edit_stuck_at_discord(world: World) -> None:
    # A restart, then a real bot process with an async job in flight whose progress edit Discord holds.
    await world.start()
    world.gw.configure(ASYNC_MODEL, completion_delay=3600)
    fi = await world.imagine("a slow tide", model=ASYNC_MODEL)
    job = await world.job_of(fi)
    await world.gw.wait_for_request(lambda r: r.kind == "POLL", timeout=WAIT)
    await world.stop()
    stored_polls = len(world.gw.polls)

    edits = world.fd.hold_requests(lambda r: r.method == "PATCH" and "/messages/" in r.path)
    process = await world.start_process(shutdown_grace_seconds=1.0)
    try:
        await world.fd.wait_for(lambda: len(world.gw.polls) > stored_polls, WAIT, what="the job resumed")
        await asyncio.wait_for(edits.arrived.wait(), WAIT)  # a progress edit is stuck on the wire
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)  # "exits within 10 s"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        edits.release()
    assert process.returncode == 0
    store = await world.open_store()
    try:
        left = await store.get_job(job.id)
        assert left is not None and left.status == JobStatus.POLLING, "left for the next start"
        assert (await store.member_totals(left.guild_id, left.user_id, 0)).held == ASYNC_PRICE
    finally:
        await store.close()


async def test_a_refused_acknowledgement_releases_the_hold_at_once(running: World) -> None:
    # Discord refuses the defer (the interaction expired in transit): nobody will see this job.
    running.fd.inject_fault(
        lambda r: r.method == "POST" and r.path.endswith("/callback"),
        status=404,
        body={"message": "Unknown interaction", "code": 10062},
    )
    fi = await running.imagine("never seen", model=SYNC_MODEL)
    error = await fi.wait_for_callback(WAIT)  # the error message, once the handler gave up
    assert error.ephemeral
    assert await running.store.active_jobs() == [], "released now, not a minute later"
    (job,) = await running.store.recent_jobs(running.fd.guild.id, running.fd.alice.id, 5)
    assert job.status == JobStatus.CANCELLED
    assert await running.ledger_of(job.id) == {EntryKind.HOLD: SYNC_PRICE, EntryKind.RELEASE: SYNC_PRICE}
    assert running.gw.posts == []
