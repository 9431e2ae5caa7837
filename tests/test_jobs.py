"""The job engine without Discord: real store, real ledger, real gateway client against the fake gateway.

A recording presenter stands in for Discord. Every test checks the books: what was captured and released.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.config import Settings
from bot.credits.ledger import Ledger
from bot.errors import BotError, DeliveryError
from bot.jobs.progress import Progress
from bot.jobs.service import Delivery
from bot.services import Services
from bot.store import open_store
from bot.store.base import Store
from bot.store.records import EntryKind, JobRecord, JobStatus, NewJob, RunLimits
from tests.factories import make_job
from tests.fakes.fake_gateway import FakeGateway, Reply

GUILD, CHANNEL = 1, 2
_message_ids = itertools.count(1000)


@dataclass
class Event:
    kind: str  # "progress" | "deliver" | "failure"
    job_id: str
    payload: Any


class RecordingPresenter:
    """Implements JobPresenter by recording calls; tests wait on them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.visible: dict[str, int] = {}  # what delivered_count answers after a "restart"
        self.fail_delivery = False
        self.jobs: Any = None  # the JobService showing through this presenter
        self._changed = asyncio.Condition()

    async def _record(self, event: Event) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def show_progress(self, job: JobRecord, progress: Progress) -> None:
        await self._record(Event("progress", job.id, progress))

    async def deliver(self, job: JobRecord, delivery: Delivery) -> int:
        if self.fail_delivery:
            raise DeliveryError("channel gone")
        await self._record(Event("deliver", job.id, delivery))
        return len(delivery.images)

    async def show_failure(self, job: JobRecord, error: BotError) -> None:
        await self._record(Event("failure", job.id, error))

    async def delivered_count(self, job: JobRecord) -> int | None:
        return self.visible.get(job.id)

    async def member_roles(self, guild_id: int, user_id: int) -> list[int]:
        return []

    def of(self, kind: str, job_id: str | None = None) -> list[Event]:
        return [e for e in self.events if e.kind == kind and (job_id is None or e.job_id == job_id)]

    async def wait_for(self, pred: Callable[[list[Event]], bool], timeout: float = 10.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: pred(self.events)), timeout)

    async def wait_end(self, job_id: str, timeout: float = 10.0) -> Event:
        """The job's delivery or failure event, once the job service has also settled it."""
        await self.wait_for(
            lambda ev: any(e.job_id == job_id and e.kind in ("deliver", "failure") for e in ev), timeout
        )
        assert self.jobs is not None
        await asyncio.wait_for(self.jobs.join(job_id), timeout)
        return next(e for e in self.events if e.job_id == job_id and e.kind in ("deliver", "failure"))


@dataclass
class Core:
    settings: Settings
    store: Store
    services: Services
    presenter: RecordingPresenter
    session: aiohttp.ClientSession


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    async with FakeGateway() as gw:
        yield gw


@pytest.fixture
def make_settings(tmp_path: Path, gateway: FakeGateway) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            discord_token="discord-test-token",
            gateway_api_key=gateway.api_key,
            gateway_base_url=gateway.base_url,
            database_url=f"sqlite:///{tmp_path / 'bot.db'}",
            allow_loopback_http=True,
            progress_edit_interval=0.05,
            poll_default_expected_seconds=0.4,
            poll_min_interval=0.05,
            poll_max_interval=0.2,
            default_allowance=500,
        )
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
async def start_core(make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    """Start a core (as a bot process would); several may start in turn on the same database."""
    started: list[Core] = []

    async def start(presenter: RecordingPresenter | None = None, **overrides: Any) -> Core:
        settings = make_settings(**overrides)
        session = aiohttp.ClientSession()
        store = open_store(settings.database_url)
        await store.open()
        services = Services.build(settings, session, store)
        presenter = presenter or RecordingPresenter()
        presenter.jobs = services.jobs
        await services.jobs.start(presenter)
        core = Core(settings, store, services, presenter, session)
        started.append(core)
        return core

    yield start
    for core in started:
        await stop(core, grace=0)


async def stop(core: Core, *, grace: float) -> None:
    """Shut a core down as SIGTERM would (idempotent)."""
    if core.session.closed:
        return
    await core.services.jobs.shutdown(grace)
    await core.store.close()
    await core.session.close()


def new_job(
    model: str = "gemini-2.5-flash-image",
    *,
    user: int = 100,
    count: int = 1,
    price: int = 39,
    mode: str = "sync",
    params: dict[str, Any] | None = None,
) -> NewJob:
    return make_job(
        guild_id=GUILD,
        channel_id=CHANNEL,
        user_id=user,
        model=model,
        count=count,
        price=price,
        params=params if params is not None else {},
        mode=mode,
        reply_message_id=next(_message_ids),
    )


async def entries(store: Store, job_id: str) -> dict[EntryKind, int]:
    totals: dict[EntryKind, int] = {}
    for entry in await store.ledger_entries(GUILD, 0, 1e12):
        if entry.job_id == job_id:
            totals[entry.kind] = totals.get(entry.kind, 0) + entry.amount
    return totals


async def assert_cancelled_and_released(core: Any, job_id: str, amount: int) -> None:
    """The member was told "cancelled", the job is CANCELLED, and its whole hold went back."""
    end = await core.presenter.wait_end(job_id)
    assert end.kind == "failure" and end.payload.message_key == "error.cancelled"
    final = await core.store.get_job(job_id)
    assert final is not None and final.status == JobStatus.CANCELLED
    assert await entries(core.store, job_id) == {EntryKind.HOLD: amount, EntryKind.RELEASE: amount}


async def test_sync_job_is_delivered_and_charged_exactly(start_core: Callable[..., Any]) -> None:
    core = await start_core()
    job = await core.services.jobs.submit(new_job(count=2, params={"number_of_images": 2}), [])
    end = await core.presenter.wait_end(job.id)
    assert end.kind == "deliver" and len(end.payload.images) == 2
    assert end.payload.charged == 78 and end.payload.available_after == 500 - 78
    assert core.presenter.of("progress", job.id), "progress shown before the result"
    stored = await core.store.get_job(job.id)
    assert stored is not None and stored.status == JobStatus.DELIVERED and stored.charged == 78
    assert await entries(core.store, job.id) == {EntryKind.HOLD: 78, EntryKind.CAPTURE: 78}
    balance = await core.services.ledger.balance(GUILD, 100, [])
    assert balance.available == 500 - 78 and balance.held == 0


async def test_async_job_is_polled_then_downloaded(start_core: Callable[..., Any], gateway: FakeGateway) -> None:
    core = await start_core()
    gateway.configure("xai/grok-imagine-image", completion_delay=0.3)
    job = await core.services.jobs.submit(new_job("xai/grok-imagine-image", price=20, mode="async"), [])
    end = await core.presenter.wait_end(job.id)
    assert end.kind == "deliver" and len(end.payload.images) == 1
    stages = [e.payload.stage for e in core.presenter.of("progress", job.id)]
    assert "generating" in stages
    assert await entries(core.store, job.id) == {EntryKind.HOLD: 20, EntryKind.CAPTURE: 20}
    assert await core.store.recent_durations("xai/grok-imagine-image", 5), "duration learned for the schedule"
    stored = await core.store.get_job(job.id)
    assert stored is not None and stored.submitted_at is not None and stored.completed_at is not None
    assert stored.started_at <= stored.submitted_at <= stored.completed_at  # stamped with the DELIVERING step


async def test_a_job_done_at_its_first_poll_teaches_the_time_of_that_poll_not_half_of_it(
    start_core: Callable[..., Any], gateway: FakeGateway
) -> None:
    # No history: the first poll comes at a twentieth of the default expectation (10 s here, so 0.5 s). The
    # operation is complete long before: all that poll tells is "at most 0.5 s". Learning the midpoint
    # (0.25 s) would make the next jobs of the model poll early, then at the widest interval.
    core = await start_core(poll_default_expected_seconds=10.0)
    gateway.configure("xai/grok-imagine-image", completion_delay=0.0)
    job = await core.services.jobs.submit(new_job("xai/grok-imagine-image", price=20, mode="async"), [])
    assert (await core.presenter.wait_end(job.id)).kind == "deliver"
    assert len(gateway.polls) == 1, "found done at its first poll"
    [learned] = await core.store.recent_durations("xai/grok-imagine-image", 5)
    assert learned >= 0.4, f"learned {learned:.3f} s: the first poll came 0.5 s after submit"


async def test_a_jobs_duration_is_learned_after_its_delivery_not_on_the_way_to_it(
    start_core: Callable[..., Any], gateway: FakeGateway
) -> None:
    learned_before_delivery: list[int] = []

    class Watching(RecordingPresenter):
        async def deliver(self, job: JobRecord, delivery: Delivery) -> int:
            learned_before_delivery.append(len(await core.store.recent_durations(job.model, 5)))
            return await super().deliver(job, delivery)

    core = await start_core(presenter=Watching())
    gateway.configure("xai/grok-imagine-image", completion_delay=0.2)
    job = await core.services.jobs.submit(new_job("xai/grok-imagine-image", price=20, mode="async"), [])
    assert (await core.presenter.wait_end(job.id)).kind == "deliver"
    assert learned_before_delivery == [0], "the member's images did not wait for the planner's write"
    assert len(await core.store.recent_durations("xai/grok-imagine-image", 5)) == 1, "learned once it ended"


async def test_fewer_images_than_asked_charges_only_those(start_core: Callable[..., Any], gateway: FakeGateway) -> None:
    core = await start_core()
    one_image = {
        "id": "img-1",
        "created": 1,
        "model": "gemini-2.5-flash-image",
        "data": [
            {
                "b64_json": __import__("base64")
                .b64encode(gateway._image_bytes(gateway.behaviour["gemini-2.5-flash-image"], 0))
                .decode()
            }
        ],
    }
    gateway.enqueue(Reply.json(one_image), method="POST")
    job = await core.services.jobs.submit(new_job(count=3, params={"number_of_images": 3}), [])
    end = await core.presenter.wait_end(job.id)
    assert end.kind == "deliver" and end.payload.charged == 39
    assert await entries(core.store, job.id) == {EntryKind.HOLD: 117, EntryKind.CAPTURE: 39, EntryKind.RELEASE: 78}


async def test_gateway_failure_releases_the_hold(start_core: Callable[..., Any], gateway: FakeGateway) -> None:
    core = await start_core()
    gateway.enqueue(Reply.error(502, "bad gateway"), method="POST")
    job = await core.services.jobs.submit(new_job(), [])
    end = await core.presenter.wait_end(job.id)
    assert end.kind == "failure" and end.payload.message_key == "error.upstream"
    assert await entries(core.store, job.id) == {EntryKind.HOLD: 39, EntryKind.RELEASE: 39}
    assert (await core.services.ledger.balance(GUILD, 100, [])).available == 500


async def test_failed_delivery_releases_the_hold(start_core: Callable[..., Any]) -> None:
    core = await start_core()
    core.presenter.fail_delivery = True
    job = await core.services.jobs.submit(new_job(), [])
    end = await core.presenter.wait_end(job.id)
    assert end.kind == "failure" and end.payload.message_key == "error.delivery"
    stored = await core.store.get_job(job.id)
    assert stored is not None and stored.status == JobStatus.FAILED
    assert await entries(core.store, job.id) == {EntryKind.HOLD: 39, EntryKind.RELEASE: 39}


async def test_cancel_a_running_async_job_refunds_it(start_core: Callable[..., Any], gateway: FakeGateway) -> None:
    core = await start_core()
    gateway.configure("xai/grok-imagine-image", completion_delay=60)
    job = await core.services.jobs.submit(new_job("xai/grok-imagine-image", price=20, mode="async"), [])
    await gateway.wait_for_request(lambda r: r.kind == "POLL", timeout=10)
    cancelled = await core.services.jobs.cancel(job.id, 100)
    assert cancelled.status == JobStatus.CANCELLED
    end = await core.presenter.wait_end(job.id)
    assert end.kind == "failure" and end.payload.message_key == "error.cancelled"
    assert await entries(core.store, job.id) == {EntryKind.HOLD: 20, EntryKind.RELEASE: 20}


async def test_only_the_owner_or_an_admin_may_cancel(start_core: Callable[..., Any], gateway: FakeGateway) -> None:
    core = await start_core(max_jobs_global=1)
    gateway.configure("xai/grok-imagine-image", completion_delay=60)
    first = await core.services.jobs.submit(new_job("xai/grok-imagine-image", price=20, mode="async"), [])
    queued = await core.services.jobs.submit(new_job("xai/grok-imagine-image", price=20, mode="async", user=7), [])
    with pytest.raises(BotError, match="not_job_owner"):
        await core.services.jobs.cancel(queued.id, 100)
    assert (await core.services.jobs.cancel(queued.id, 999, is_admin=True)).status == JobStatus.CANCELLED
    assert await entries(core.store, queued.id) == {EntryKind.HOLD: 20, EntryKind.RELEASE: 20}
    await core.services.jobs.cancel(first.id, 100)


async def test_restart_mid_poll_delivers_once_and_charges_once(
    start_core: Callable[..., Any], gateway: FakeGateway
) -> None:
    first = await start_core()
    gateway.configure("xai/grok-imagine-image", completion_delay=60)
    job = await first.services.jobs.submit(new_job("xai/grok-imagine-image", price=20, mode="async"), [])
    await gateway.wait_for_request(lambda r: r.kind == "POLL", timeout=10)
    await stop(first, grace=0)  # the process dies mid-poll
    assert not first.presenter.of("deliver")

    second = await start_core()  # the next start, same database
    resumed = await second.store.get_job(job.id)
    assert resumed is not None and resumed.status == JobStatus.POLLING and resumed.operation_id
    gateway.complete(resumed.operation_id)
    end = await second.presenter.wait_end(job.id)
    assert end.kind == "deliver"
    assert len(gateway.posts) == 1, "the generation was not submitted twice"
    assert await entries(second.store, job.id) == {EntryKind.HOLD: 20, EntryKind.CAPTURE: 20}


async def test_sync_job_cut_off_by_a_restart_is_refunded(start_core: Callable[..., Any], gateway: FakeGateway) -> None:
    first = await start_core()
    gateway.configure("gemini-2.5-flash-image", sync_delay=60)
    job = await first.services.jobs.submit(new_job(), [])
    await gateway.wait_for_request(lambda r: r.kind == "POST", timeout=10)
    await stop(first, grace=0)

    second = await start_core()
    end = await second.presenter.wait_end(job.id)
    assert end.kind == "failure" and end.payload.message_key == "error.interrupted"
    assert await entries(second.store, job.id) == {EntryKind.HOLD: 39, EntryKind.RELEASE: 39}


async def test_restart_after_posting_settles_without_posting_again(
    start_core: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    # A crash between posting the images and settling leaves the row DELIVERING with the hold in place.
    settings = make_settings()
    async with aiohttp.ClientSession() as session, open_store(settings.database_url) as store:
        services = Services.build(settings, session, store)
        job = await services.ledger.hold_for_job(new_job(), [])
        await store.update_job(job.id, status=JobStatus.SUBMITTING)
        await store.update_job(job.id, status=JobStatus.DELIVERING)

    presenter = RecordingPresenter()
    presenter.visible[job.id] = 1  # the member can already see the image
    core = await start_core(presenter=presenter)
    final = await core.store.get_job(job.id)
    assert final is not None and final.status == JobStatus.DELIVERED and final.charged == 39
    assert not presenter.of("deliver"), "not posted a second time"
    assert await entries(core.store, job.id) == {EntryKind.HOLD: 39, EntryKind.CAPTURE: 39}


async def test_restart_before_posting_an_async_result_fetches_it_again(
    start_core: Callable[..., Any], make_settings: Callable[..., Settings], gateway: FakeGateway
) -> None:
    first = await start_core()
    gateway.configure("xai/grok-imagine-image", completion_delay=60)
    job = await first.services.jobs.submit(new_job("xai/grok-imagine-image", price=20, mode="async"), [])
    await gateway.wait_for_request(lambda r: r.kind == "POLL", timeout=10)
    await stop(first, grace=0)
    async with open_store(make_settings().database_url) as store:
        await store.update_job(job.id, status=JobStatus.DELIVERING)  # crashed while posting
    gateway.configure("xai/grok-imagine-image", completion_delay=0)
    for operation in gateway.operations:
        gateway.complete(operation)

    second = await start_core()  # presenter.visible is empty: nothing was posted
    end = await second.presenter.wait_end(job.id)
    assert end.kind == "deliver"
    assert len(gateway.posts) == 1
    assert await entries(second.store, job.id) == {EntryKind.HOLD: 20, EntryKind.CAPTURE: 20}


async def _claimed_by_a_dead_process(settings: Settings, *, marked: bool) -> JobRecord:
    """A job claimed by a process that died an hour ago, before (or just after) marking it submitted."""
    long_ago = time.time() - 3600
    async with aiohttp.ClientSession() as session, open_store(settings.database_url) as store:
        services = Services.build(settings, session, store)
        job = await services.ledger.hold_for_job(new_job(), [])
        await store.heartbeat("dead", [], "1", now=long_ago)
        limits = RunLimits(per_member=10, per_guild=10, global_limit=10)
        [claimed] = await store.claim_jobs("dead", limits, lease_seconds=30, now=long_ago)
        if marked:
            assert await store.mark_submitted(job.id, "dead", now=long_ago)
        return claimed


async def test_a_dead_processs_claimed_unsubmitted_job_goes_back_in_line_and_is_delivered(
    start_core: Callable[..., Any], make_settings: Callable[..., Settings], gateway: FakeGateway
) -> None:
    job = await _claimed_by_a_dead_process(make_settings(), marked=False)
    core = await start_core()  # takes the dead process's job over
    end = await core.presenter.wait_end(job.id)
    assert end.kind == "deliver", "its POST never went out: run, not refunded as interrupted"
    assert len(gateway.posts) == 1
    assert await entries(core.store, job.id) == {EntryKind.HOLD: 39, EntryKind.CAPTURE: 39}


async def test_a_dead_processs_job_whose_post_may_have_gone_out_is_refunded_as_interrupted(
    start_core: Callable[..., Any], make_settings: Callable[..., Settings], gateway: FakeGateway
) -> None:
    job = await _claimed_by_a_dead_process(make_settings(), marked=True)
    core = await start_core()
    end = await core.presenter.wait_end(job.id)
    assert end.kind == "failure" and end.payload.message_key == "error.interrupted"
    assert gateway.posts == [], "never sent a second time"
    assert await entries(core.store, job.id) == {EntryKind.HOLD: 39, EntryKind.RELEASE: 39}


async def test_a_queue_longer_than_one_claim_is_started_whole_without_another_wake_up(
    start_core: Callable[..., Any],
    make_settings: Callable[..., Settings],
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bot.jobs.service.CLAIM_CHUNK", 2)
    gateway.configure("xai/grok-imagine-image", completion_delay=3600)
    settings = make_settings()
    async with aiohttp.ClientSession() as session, open_store(settings.database_url) as store:
        services = Services.build(settings, session, store)
        jobs = [
            await services.ledger.hold_for_job(new_job("xai/grok-imagine-image", price=20, mode="async", user=u), [])
            for u in range(5)
        ]
    # Queued before the start: the start's one wake-up is all the dispatcher gets (heartbeats are an hour).
    await start_core(heartbeat_seconds=3600, job_lease_seconds=7200)
    await gateway.wait_for_request(lambda _: len(gateway.posts) == len(jobs), timeout=10)


async def test_with_nothing_queued_the_position_refresh_reads_no_job_rows(
    start_core: Callable[..., Any], gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = await start_core()
    gateway.configure("xai/grok-imagine-image", completion_delay=3600)
    await core.services.jobs.submit(new_job("xai/grok-imagine-image", price=20, mode="async"), [])
    await gateway.wait_for_request(lambda r: r.kind == "POLL", timeout=10)  # running: nothing waits
    reads: list[int] = []
    original = core.store.active_jobs

    async def counted() -> list[JobRecord]:
        reads.append(1)
        return await original()

    monkeypatch.setattr(core.store, "active_jobs", counted)
    await core.services.jobs._show_positions()  # what every dispatch wake-up schedules, once a second
    assert reads == [], "no read of every active job when no reply shows a position"


async def test_round_robin_between_members(start_core: Callable[..., Any], gateway: FakeGateway) -> None:
    core = await start_core(max_jobs_global=1, max_jobs_per_member=1)
    gateway.configure("xai/grok-imagine-image", completion_delay=60)
    blocker = await core.services.jobs.submit(new_job("xai/grok-imagine-image", price=20, mode="async", user=1), [])
    await gateway.wait_for_request(lambda r: r.kind == "POLL", timeout=10)
    gateway.configure("xai/grok-imagine-image", completion_delay=0.0)
    submitted: dict[str, str] = {}
    for user, name in ((10, "a"), (20, "b"), (30, "c")):
        for index in range(3):
            job = await core.services.jobs.submit(
                new_job("xai/grok-imagine-image", price=20, mode="async", user=user), []
            )
            submitted[job.id] = f"{name}{index}"
    operation = next(iter(gateway.operations))
    gateway.complete(operation)
    await core.presenter.wait_for(lambda ev: sum(e.kind == "deliver" for e in ev) == 10, timeout=30)
    order = [submitted[e.job_id] for e in core.presenter.events if e.kind == "deliver" and e.job_id in submitted]
    assert order == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]
    assert blocker.id in {e.job_id for e in core.presenter.of("deliver")}


async def test_a_cancelled_queued_job_gets_no_late_progress_edit(
    start_core: Callable[..., Any], gateway: FakeGateway
) -> None:
    core = await start_core(max_jobs_global=1, progress_edit_interval=0.5)
    gateway.configure("xai/grok-imagine-image", completion_delay=3600)
    await core.services.jobs.submit(new_job("xai/grok-imagine-image", price=20, mode="async", user=1), [])
    await gateway.wait_for_request(lambda r: r.kind == "POLL", timeout=10)
    c = await core.services.jobs.submit(new_job(user=2), [])
    b = await core.services.jobs.submit(new_job(user=3), [])
    await core.presenter.wait_for(
        lambda ev: any(e.job_id == b.id and e.kind == "progress" and e.payload.position == 2 for e in ev)
    )
    await core.services.jobs.cancel(c.id, 2)  # b moves to position 1: an edit now waits out b's throttle
    await core.services.jobs.cancel(b.id, 3)
    d = await core.services.jobs.submit(new_job(user=4), [])
    await core.presenter.wait_for(lambda ev: any(e.job_id == d.id and e.kind == "progress" for e in ev))
    gateway.configure("gemini-2.5-flash-image", sync_delay=2.0)  # d generates long enough to show it
    operation = next(iter(gateway.operations))
    gateway.complete(operation)
    # d's second edit comes at least one interval after its first, so after any late edit of b's.
    await core.presenter.wait_for(lambda ev: sum(e.job_id == d.id and e.kind == "progress" for e in ev) >= 2)
    kinds = [e.kind for e in core.presenter.events if e.job_id == b.id]
    assert kinds[-1] == "failure", kinds


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Any]:
    """`await settled(job_id)`: wait until any Ledger has settled that job (a spy on Ledger.settle)."""
    done: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)
    original = Ledger.settle

    async def spy(self: Ledger, job_id: str, status: JobStatus, **kwargs: Any) -> Any:
        result = await original(self, job_id, status, **kwargs)
        done[job_id].set()
        return result

    monkeypatch.setattr(Ledger, "settle", spy)
    return lambda job_id: asyncio.wait_for(done[job_id].wait(), 10)


async def test_a_hold_never_acknowledged_is_released_by_the_next_start(
    start_core: Callable[..., Any],
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    settled: Callable[[str], Any],
) -> None:
    monkeypatch.setattr("bot.jobs.service.UNACKNOWLEDGED_AFTER", 0.05)
    settings = make_settings()
    async with aiohttp.ClientSession() as session, open_store(settings.database_url) as store:
        services = Services.build(settings, session, store)
        # The process died between holding the credits and answering the member: no reply message.
        orphan = await services.ledger.hold_for_job(make_job(guild_id=GUILD, price=39), [])

    core = await start_core()
    await settled(orphan.id)
    released = await core.store.get_job(orphan.id)
    assert released is not None and released.status == JobStatus.FAILED
    assert await entries(core.store, orphan.id) == {EntryKind.HOLD: 39, EntryKind.RELEASE: 39}
    assert not core.presenter.of("failure", orphan.id), "nobody to tell: it never had a reply"


async def test_an_idle_bot_still_releases_a_hold_whose_acknowledgement_failed(
    start_core: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, settled: Callable[[str], Any]
) -> None:
    monkeypatch.setattr("bot.jobs.service.UNACKNOWLEDGED_AFTER", 0.1)
    core = await start_core()
    # Held, then Discord refused the acknowledgement and the caller was cancelled: no reply, and no
    # other activity will wake the dispatcher.
    orphan = await core.services.jobs.submit(make_job(guild_id=GUILD, price=39), [])
    await settled(orphan.id)
    assert await entries(core.store, orphan.id) == {EntryKind.HOLD: 39, EntryKind.RELEASE: 39}
    assert not core.services.jobs._roles.known(orphan.id), "a released job's roles are not kept"


async def test_a_cancel_racing_the_dispatchers_claim_never_reaches_the_gateway(
    start_core: Callable[..., Any], gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = await start_core()
    job = new_job()
    claimed, release = asyncio.Event(), asyncio.Event()
    original = core.store.claim_jobs

    async def paused_claim(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        if any(j.id == job.id for j in result):
            claimed.set()  # the claim is committed; its task is not spawned yet
            await release.wait()
        return result

    monkeypatch.setattr(core.store, "claim_jobs", paused_claim)
    await core.services.jobs.submit(job, [])
    await asyncio.wait_for(claimed.wait(), 10)
    await core.services.jobs.cancel(job.id, 100)  # read the row as claimed; no task here yet
    release.set()
    await assert_cancelled_and_released(core, job.id, 39)
    assert gateway.posts == [], "a cancelled job never reaches the gateway"
    assert len(core.presenter.of("failure", job.id)) == 1, "told once"


async def test_a_cancel_from_another_process_is_seen_by_the_running_job_on_its_next_poll(
    start_core: Callable[..., Any], gateway: FakeGateway
) -> None:
    core = await start_core()
    gateway.configure("xai/grok-imagine-image", completion_delay=3600)
    job = await core.services.jobs.submit(new_job("xai/grok-imagine-image", price=20, mode="async"), [])
    await gateway.wait_for_request(lambda r: r.kind == "POLL", timeout=10)
    # Another bot process on the same database: it does not run the job, so it can only flag it.
    other = Services.build(core.settings, core.session, core.store).jobs
    flagged = await other.cancel(job.id, 100)
    assert flagged.cancel_requested and not flagged.is_terminal
    await assert_cancelled_and_released(core, job.id, 20)


async def test_a_cancel_flag_seen_by_the_lease_loop_while_the_job_settles_its_own_cancel_is_ignored(
    start_core: Callable[..., Any], gateway: FakeGateway
) -> None:
    """The job saw the cancel flag at its step and is settling; the lease loop sees the same flag in that
    moment. Interrupting the task then cut the settlement and the member's "Cancelled" (the job stayed
    active, the reply kept its last progress)."""
    settling, release = asyncio.Event(), asyncio.Event()
    core = await start_core()
    gateway.configure("xai/grok-imagine-image", completion_delay=3600)
    job = await core.services.jobs.submit(new_job("xai/grok-imagine-image", price=20, mode="async"), [])
    await gateway.wait_for_request(lambda r: r.kind == "POLL", timeout=10)
    finish_job = core.store.finish_job

    async def slow_finish(*args: Any, **kwargs: Any) -> Any:
        settling.set()
        await release.wait()  # the settlement's commit takes a moment
        return await finish_job(*args, **kwargs)

    core.store.finish_job = slow_finish
    other = Services.build(core.settings, core.session, core.store).jobs  # another process: it only flags
    await other.cancel(job.id, 100)
    await asyncio.wait_for(settling.wait(), 10)  # seen at its next poll; now settling
    await core.services.jobs._keep_leases()  # the lease loop's beat, which acts on cancel flags
    release.set()
    await assert_cancelled_and_released(core, job.id, 20)


async def test_more_images_than_asked_are_neither_posted_nor_charged(
    start_core: Callable[..., Any], gateway: FakeGateway
) -> None:
    core = await start_core()
    image = gateway._image_bytes(gateway.behaviour["gemini-2.5-flash-image"], 0)
    three = {"data": [{"b64_json": base64.b64encode(image).decode()} for _ in range(3)]}
    gateway.enqueue(Reply.json(three), method="POST")
    job = await core.services.jobs.submit(new_job(count=1), [])
    end = await core.presenter.wait_end(job.id)
    assert end.kind == "deliver" and len(end.payload.images) == 1 and end.payload.charged == 39
    assert await entries(core.store, job.id) == {EntryKind.HOLD: 39, EntryKind.CAPTURE: 39}


async def test_a_cancel_while_the_images_are_being_posted_changes_nothing(
    start_core: Callable[..., Any], gateway: FakeGateway
) -> None:
    posting, release = asyncio.Event(), asyncio.Event()

    class SlowPoster(RecordingPresenter):
        async def deliver(self, job: JobRecord, delivery: Delivery) -> int:
            posting.set()
            await release.wait()  # Discord is slow to take the upload
            return await super().deliver(job, delivery)

    core = await start_core(presenter=SlowPoster())
    job = await core.services.jobs.submit(new_job(), [])
    await asyncio.wait_for(posting.wait(), 10)
    answer = await core.services.jobs.cancel(job.id, 100)
    assert answer.status == JobStatus.DELIVERING, "too late to cancel: the member gets the images"
    release.set()
    end = await core.presenter.wait_end(job.id)
    assert end.kind == "deliver"
    assert await entries(core.store, job.id) == {EntryKind.HOLD: 39, EntryKind.CAPTURE: 39}


async def test_a_queued_job_with_its_reply_is_never_taken_for_unacknowledged(
    start_core: Callable[..., Any],
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    settled: Callable[[str], Any],
) -> None:
    monkeypatch.setattr("bot.jobs.service.UNACKNOWLEDGED_AFTER", 0.05)
    core = await start_core(max_jobs_global=1)
    gateway.configure("xai/grok-imagine-image", completion_delay=3600)
    blocker = await core.services.jobs.submit(new_job("xai/grok-imagine-image", price=20, mode="async"), [])
    await gateway.wait_for_request(lambda r: r.kind == "POLL", timeout=10)
    waiting = await core.services.jobs.submit(new_job(user=2), [])  # has its reply: waits its turn
    orphan = await core.services.jobs.submit(make_job(guild_id=GUILD, user_id=3, price=39), [])
    await settled(orphan.id)  # a dispatcher pass after the threshold has run
    still = await core.store.get_job(waiting.id)
    assert still is not None and still.status == JobStatus.QUEUED, "a job waiting its turn keeps its hold"
    stored = await core.store.get_job(blocker.id)
    assert stored is not None and stored.operation_id
    gateway.complete(stored.operation_id)
    assert (await core.presenter.wait_end(waiting.id)).kind == "deliver"


async def test_a_job_taken_over_by_another_process_is_left_to_it_neither_delivered_nor_settled_here(
    start_core: Callable[..., Any], gateway: FakeGateway
) -> None:
    core = await start_core()
    gateway.configure("xai/grok-imagine-image", completion_delay=3600)
    job = await core.services.jobs.submit(new_job("xai/grok-imagine-image", price=20, mode="async"), [])
    await gateway.wait_for_request(lambda r: r.kind == "POLL", timeout=10)
    # This process was taken for dead (say, a long stall): another one took the job over.
    later = time.time() + 3600
    [taken] = await core.store.take_over_jobs("other", lease_seconds=60, alive_seconds=1, now=later)
    assert taken.id == job.id and taken.owner == "other"
    stored = await core.store.get_job(job.id)
    assert stored is not None and stored.operation_id
    gateway.complete(stored.operation_id)
    await asyncio.wait_for(core.services.jobs.join(job.id), 10)  # its next poll saw the new owner
    assert not core.presenter.of("deliver", job.id) and not core.presenter.of("failure", job.id)
    left = await core.store.get_job(job.id)
    assert left is not None and left.status == JobStatus.POLLING and left.owner == "other"
    assert await entries(core.store, job.id) == {EntryKind.HOLD: 20}, "settled by its new owner, not here"
