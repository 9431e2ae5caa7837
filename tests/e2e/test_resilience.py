"""Jobs surviving what happens in real servers: restarts, expired tokens, big images, busy queues,
cancel and re-roll buttons, price quotes, and shutdown. Real discord.py client, fake Discord, fake gateway."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.credits.ledger import Ledger
from bot.generation.catalog import Catalog
from bot.store.records import EntryKind, JobStatus
from tests.e2e.harness import WAIT, World, button, status_line
from tests.fakes.fake_discord import CallbackType, FakeDiscord, FakeInteraction, Perm
from tests.fakes.fake_gateway import FakeGateway, Reply

ASYNC_MODEL, ASYNC_PRICE = "xai/grok-imagine-image", 20
SYNC_MODEL, SYNC_PRICE = "gemini-2.5-flash-image", 39


async def test_restart_mid_poll_delivers_once_and_charges_once(world: World) -> None:
    await world.start()
    world.gw.configure(ASYNC_MODEL, completion_delay=3600)
    fi = await world.imagine("a paper boat", model=ASYNC_MODEL)
    job = await world.job_of(fi)
    await world.gw.wait_for_request(lambda r: r.kind == "POLL", timeout=WAIT)
    await world.stop()  # SIGTERM mid-poll: the job stays in the database

    store = await world.open_store()
    stored = await store.get_job(job.id)
    await store.close()
    assert stored is not None and stored.status == JobStatus.POLLING and stored.operation_id

    await world.start()
    world.gw.complete(stored.operation_id)
    message = await world.finished(fi)
    assert len(message.attachments) == 1
    assert sum(1 for edit in fi.edits if edit.attachments) == 1, "the result was posted exactly once"
    assert len(world.gw.posts) == 1, "not submitted (or paid) twice"
    assert await world.ledger_of(job.id) == {EntryKind.HOLD: ASYNC_PRICE, EntryKind.CAPTURE: ASYNC_PRICE}


async def test_result_after_token_expiry_is_delivered_through_the_channel(running: World) -> None:
    running.gw.configure(ASYNC_MODEL, completion_delay=3600)
    fi = await running.imagine("an old map", model=ASYNC_MODEL)
    job = await running.job_of(fi)
    await running.gw.wait_for_request(lambda r: r.kind == "POLL", timeout=WAIT)
    fi.expire()  # fifteen minutes have passed
    stored = await running.store.get_job(job.id)
    assert stored is not None and stored.operation_id
    running.gw.complete(stored.operation_id)

    message = await running.finished(fi)
    final = message.history[-1]
    assert final.attachments and final.route == "/channels/{channel_id}/messages/{message_id}", final.route
    assert await running.ledger_of(job.id) == {EntryKind.HOLD: ASYNC_PRICE, EntryKind.CAPTURE: ASYNC_PRICE}


async def test_no_permission_to_post_releases_the_credits(world: World) -> None:
    world.fd.channel.set_permissions(world.fd.bot_member, deny=Perm.ATTACH_FILES)
    await world.start()
    world.gw.configure(ASYNC_MODEL, completion_delay=3600)
    fi = await world.imagine("a locked door", model=ASYNC_MODEL)
    job = await world.job_of(fi)
    await world.gw.wait_for_request(lambda r: r.kind == "POLL", timeout=WAIT)
    fi.expire()
    stored = await world.store.get_job(job.id)
    assert stored is not None and stored.operation_id
    world.gw.complete(stored.operation_id)
    assert world.bot is not None
    await asyncio.wait_for(world.bot.services.jobs.join(job.id), WAIT)
    final = await world.store.get_job(job.id)
    assert final is not None and final.status == JobStatus.FAILED and final.error_key == "error.delivery"
    assert await world.ledger_of(job.id) == {EntryKind.HOLD: ASYNC_PRICE, EntryKind.RELEASE: ASYNC_PRICE}
    assert not any(edit.attachments for edit in fi.edits)


async def test_a_4096_noise_image_is_fitted_under_a_10_mib_limit(running: World) -> None:
    running.gw.configure(SYNC_MODEL, image_size=(4096, 4096), noise=True)
    fi = await running.imagine("static", model=SYNC_MODEL)
    # Fitting 4096² noise under 10 MiB is CPU-bound (16 s seen on a loaded 2-core machine): wait longer.
    message = await running.finished(fi, timeout=120)
    (attachment,) = message.attachments
    assert attachment.size <= fi.attachment_size_limit == 10 * 1024 * 1024
    assert not any(r.status == 413 for r in running.fd.requests)
    with Image.open(io.BytesIO(attachment.data)) as image:
        assert image.format in ("WEBP", "PNG", "JPEG")
    job = await running.job_of(fi)
    assert await running.ledger_of(job.id) == {EntryKind.HOLD: SYNC_PRICE, EntryKind.CAPTURE: SYNC_PRICE}


async def test_three_members_five_jobs_each_take_turns(world: World) -> None:
    await world.start(max_jobs_global=1)
    world.gw.configure(SYNC_MODEL, sync_delay=0.3)  # long enough for the queue's edits to show it moving
    release = asyncio.Event()
    world.gw.enqueue(Reply.held(release), method="POST")  # the very first job holds the only slot
    members = {"a": world.fd.alice, "b": world.fd.bob, "c": world.fd.admin}
    interactions: list[FakeInteraction] = []
    for name, member in members.items():
        for index in range(5):
            interactions.append(await world.imagine(f"{name}{index}", user=member, model=SYNC_MODEL))
    await asyncio.gather(*(fi.wait_for_callback(WAIT) for fi in interactions))
    # Every job but the first (holding the slot) must be in the queue, reply attached, before the slot
    # frees up: on a loaded machine an acknowledgement can land late and make the order look unfair.
    for fi in interactions[1:]:
        await fi.wait_for_edit(lambda e: status_line(e).startswith("Queued: position"), WAIT)
    last = interactions[-1]
    release.set()
    for fi in interactions:
        await world.finished(fi)
    order = [post.json["prompt"] for post in world.gw.posts]
    assert order == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2", "a3", "b3", "c3", "a4", "b4", "c4"]
    positions = [
        int(status_line(e).split("position ", 1)[1].split(" ", 1)[0])
        for e in last.edits
        if status_line(e).startswith("Queued")
    ]
    assert positions == sorted(positions, reverse=True) and positions[-1] < positions[0], "it moved up"


async def test_jobs_wait_in_the_order_members_asked_even_when_a_handler_reaches_the_hold_late(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The interleaving behind the flaky round-robin test: a slow step in one /imagine handler (a REST
    # lookup, a cache fill) lets requests sent after it reach the hold, and the queue, first.
    await world.start(max_jobs_global=1)
    world.gw.configure(SYNC_MODEL, sync_delay=0.05)
    release = asyncio.Event()
    world.gw.enqueue(Reply.held(release), method="POST")  # the first job holds the only slot
    blocker = await world.imagine("blocker", user=world.fd.bob, model=SYNC_MODEL)
    await world.gw.wait_for_request(lambda r: r.kind == "POST", timeout=WAIT)
    original, late, holds = Ledger.hold_for_job, asyncio.Event(), []

    async def hold_for_job(self: Ledger, job: Any, roles: Any) -> Any:
        if job.prompt == "first" and not late.is_set():
            await late.wait()  # "first" reaches the hold only after "second" and "third" are queued
        holds.append(job.prompt)
        return await original(self, job, roles)

    monkeypatch.setattr(Ledger, "hold_for_job", hold_for_job)
    asked = [await world.imagine(prompt, model=SYNC_MODEL) for prompt in ("first", "second", "third")]
    for fi in asked[1:]:
        await fi.wait_for_edit(lambda e: status_line(e).startswith("Queued: position"), WAIT)
    late.set()
    await asked[0].wait_for_edit(lambda e: status_line(e).startswith("Queued: position"), WAIT)
    assert holds == ["second", "third", "first"], "the handlers reached the hold out of order"
    release.set()
    for fi in [blocker, *asked]:
        await world.finished(fi)
    assert [post.json["prompt"] for post in world.gw.posts] == ["blocker", "first", "second", "third"]


async def test_cancel_a_queued_job_and_a_running_job_refunds_both(world: World) -> None:
    await world.start(max_jobs_per_member=1)
    world.gw.configure(ASYNC_MODEL, completion_delay=3600)
    running_fi = await world.imagine("first", model=ASYNC_MODEL)
    await world.gw.wait_for_request(lambda r: r.kind == "POLL", timeout=WAIT)
    queued_fi = await world.imagine("second", model=ASYNC_MODEL)
    queued_msg = await queued_fi.wait_for_message_state(lambda m: any("cancel" in c for c in m.custom_ids), WAIT)
    assert status_line(queued_msg).startswith("Queued")

    click = await world.fd.click_button(queued_msg, button(queued_msg, "cancel"), user=world.fd.alice)
    await click.wait_for_callback(WAIT)
    assert status_line(await world.finished(queued_fi)).startswith("Cancelled")

    running_msg = await running_fi.wait_for_message_state(lambda m: status_line(m).startswith("Generating"), WAIT)
    by_bob = await world.fd.click_button(running_msg, button(running_msg, "cancel"), user=world.fd.bob)
    assert "Only the member who asked" in (await by_bob.wait_for_callback(WAIT)).data["content"]
    click = await world.fd.click_button(running_msg, button(running_msg, "cancel"), user=world.fd.alice)
    await click.wait_for_callback(WAIT)
    assert status_line(await world.finished(running_fi)).startswith("Cancelled")

    for fi in (queued_fi, running_fi):
        job = await world.job_of(fi)
        assert job.status == JobStatus.CANCELLED
        assert await world.ledger_of(job.id) == {EntryKind.HOLD: ASYNC_PRICE, EntryKind.RELEASE: ASYNC_PRICE}
    balance = await world.bot.services.ledger.balance(world.fd.guild.id, world.fd.alice.id, [])  # type: ignore[union-attr]
    assert balance.available == 500 and balance.held == 0


async def test_result_buttons_work_after_a_restart(world: World) -> None:
    await world.start()
    fi = await world.imagine("a snow globe", model=SYNC_MODEL)
    message = await world.finished(fi)
    original = await world.job_of(fi)
    await world.stop()
    await world.start()  # a new process: no view objects in memory

    reroll = await world.fd.click_button(message, button(message, "reroll"), user=world.fd.alice)
    assert (await reroll.wait_for_callback(WAIT)).type == CallbackType.DEFERRED_CHANNEL_MESSAGE
    rerolled = await world.finished(reroll)
    assert len(rerolled.attachments) == 1 and rerolled.id != message.id
    again = await world.job_of(reroll)
    assert again.id != original.id and again.prompt == original.prompt and again.model == original.model
    assert await world.ledger_of(again.id) == {EntryKind.HOLD: SYNC_PRICE, EntryKind.CAPTURE: SYNC_PRICE}
    assert [p.json["prompt"] for p in world.gw.posts] == ["a snow globe", "a snow globe"]

    by_bob = await world.fd.click_button(message, button(message, "delete"), user=world.fd.bob)
    assert "Only the member who asked" in (await by_bob.wait_for_callback(WAIT)).data["content"]
    assert not message.deleted
    by_owner = await world.fd.click_button(message, button(message, "delete"), user=world.fd.alice)
    await by_owner.wait_for_callback(WAIT)
    await world.fd.wait_for(lambda: message.deleted, WAIT, what="message deleted")


async def test_quote_confirm_holds_only_after_confirmation(world: World) -> None:
    await world.start(quote_threshold=50)
    fi = await world.imagine("two foxes", model=SYNC_MODEL, count=2)
    quote = await fi.wait_for_callback(WAIT)
    assert quote.type == CallbackType.CHANNEL_MESSAGE and quote.ephemeral
    assert "78 credits" in quote.data["content"] and "422 credits left" in quote.data["content"]
    assert await world.store.active_jobs() == [] and world.gw.posts == []

    confirm_id = quote.data["components"][0]["components"][0]["custom_id"]
    click = await world.fd.click_button(fi.message, confirm_id, user=world.fd.alice)
    await click.wait_for_callback(WAIT)
    reply = await click.wait_for_followup(lambda m: not m.ephemeral, WAIT)
    await world.fd.wait_for(lambda: len(reply.attachments) == 2, WAIT, what="images delivered")
    (job,) = [j for j in await world.store.recent_jobs(world.fd.guild.id, world.fd.alice.id, 5)]
    assert world.bot is not None
    await asyncio.wait_for(world.bot.services.jobs.join(job.id), WAIT)
    assert await world.ledger_of(job.id) == {EntryKind.HOLD: 78, EntryKind.CAPTURE: 78}


async def test_quote_cancel_charges_nothing(world: World) -> None:
    await world.start(quote_threshold=50)
    fi = await world.imagine("two foxes", model=SYNC_MODEL, count=2)
    quote = await fi.wait_for_callback(WAIT)
    cancel_id = quote.data["components"][0]["components"][1]["custom_id"]
    click = await world.fd.click_button(fi.message, cancel_id, user=world.fd.alice)
    update = await click.wait_for_callback(WAIT)
    assert "Nothing was charged" in update.data["content"]
    assert world.gw.posts == [] and await world.store.active_jobs() == []
    assert await world.store.ledger_entries(world.fd.guild.id, 0, 1e12) == []


async def test_blocked_word_is_refused_before_any_spend(running: World) -> None:
    add = await running.command("blocklist add", {"pattern": "forbidden fruit"}, user=running.fd.admin)
    assert add.callback.ephemeral  # type: ignore[union-attr]
    fi = await running.imagine("A FORBIDDEN  fruit? no: a Forbidden fruit basket", model=SYNC_MODEL)
    callback = await fi.wait_for_callback(WAIT)
    assert callback.ephemeral and "does not allow" in callback.data["content"]
    assert running.gw.posts == [] and await running.store.active_jobs() == []
    ok = await running.imagine("forbiddenfruit is one word", model=SYNC_MODEL)
    assert (await ok.wait_for_callback(WAIT)).type == CallbackType.DEFERRED_CHANNEL_MESSAGE


async def test_sigterm_stops_within_grace_and_the_next_start_settles(world: World) -> None:
    await world.start(shutdown_grace_seconds=1.0)
    world.gw.configure(SYNC_MODEL, sync_delay=3600)
    world.gw.configure(ASYNC_MODEL, completion_delay=3600)
    sync_fi = await world.imagine("slow sync", model=SYNC_MODEL)
    async_fi = await world.imagine("slow async", model=ASYNC_MODEL)
    await world.gw.wait_for_request(lambda r: r.kind == "POLL", timeout=WAIT)
    sync_job, async_job = await world.job_of(sync_fi), await world.job_of(async_fi)

    os.kill(os.getpid(), signal.SIGTERM)  # handled by the bot's own signal handler
    assert world._task is not None
    await asyncio.wait_for(world._task, 10)  # "exits within 10 s"
    world._task = None
    world.bot = None
    world._patch.close()
    late = await world.imagine("after shutdown", model=SYNC_MODEL)
    assert late.callback is None  # nobody is listening any more

    await world.start()
    message = await world.finished(sync_fi)
    assert "restarted before this image came back" in status_line(message)
    assert await world.ledger_of(sync_job.id) == {EntryKind.HOLD: SYNC_PRICE, EntryKind.RELEASE: SYNC_PRICE}
    resumed = await world.store.get_job(async_job.id)
    assert resumed is not None and resumed.status == JobStatus.POLLING, "the async job resumed polling"


async def test_more_than_ten_images_go_ten_per_message_and_the_rest_in_a_follow_up(tmp_path: Path) -> None:
    # An operator's catalog may offer a model that makes more images than fit in one Discord message.
    catalog_file = tmp_path / "models.json"
    catalog_file.write_text(
        json.dumps(
            {
                "aspect_ratios": ["1:1"],
                "models": [{"name": "house-burst", "provider": "Google", "price": 2, "mode": "sync", "max_images": 12}],
            }
        )
    )
    async with FakeDiscord() as fd, FakeGateway(catalog=Catalog.load(catalog_file)) as gw:
        world = World(fd=fd, gw=gw, tmp=tmp_path)
        try:
            await world.start(model_catalog_path=str(catalog_file), default_model="house-burst")
            fi = await world.imagine("a flock of birds", model="house-burst", count=12)
            message = await world.finished(fi)
            assert len(message.attachments) == 10
            follow_up = await fi.wait_for_followup(lambda m: len(m.attachments) == 2, WAIT)
            names = [a.filename for a in message.attachments + follow_up.attachments]
            assert len(set(names)) == 12
            job = await world.job_of(fi)
            assert job.status == JobStatus.DELIVERED and job.delivered_count == 12
            assert await world.ledger_of(job.id) == {EntryKind.HOLD: 24, EntryKind.CAPTURE: 24}
        finally:
            await world.stop()
