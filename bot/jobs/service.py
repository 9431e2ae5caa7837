"""A job's life: queue, submit, poll, download, deliver, settle; cancel; recover after a restart.

Every state change is written to the store before the next step starts, so a restart (or another process)
can pick a job up where it stopped. Credits move only through the ledger, and every job ends in exactly
one settlement: captured for the images delivered, the rest released.

The job code knows nothing of Discord: it reports through a `JobPresenter` that the adapter implements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from bot.credits.ledger import Ledger
from bot.errors import (
    BotError,
    DeliveryError,
    GenerationPausedError,
    InterruptedJobError,
    JobCancelledError,
    JobNotFoundError,
    NotJobOwnerError,
    RequestError,
    ShuttingDownError,
)
from bot.generation.gateway import GatewayClient
from bot.generation.images import ImageData
from bot.generation.polling import PollPlanner
from bot.jobs.progress import Progress, ProgressReporter, Stage
from bot.jobs.scheduling import ConcurrencyLimits, queue_positions
from bot.jobs.waiting import estimate_starts
from bot.members.roles import DEFAULT_TTL, MemberRoles
from bot.ops.hooks import JobHooks
from bot.ops.logctx import job_context, set_job_context
from bot.store.base import Store
from bot.store.records import RUNNING_STATUSES, JobRecord, JobStatus, NewJob, RunLimits
from bot.throttle import RequestRateLimiter

log = logging.getLogger(__name__)

UNACKNOWLEDGED_AFTER = 60.0  # seconds a held job may wait for its reply message before it is released
STOP_STEP_TIMEOUT = 0.5  # seconds each shutdown step may take once the grace time is over
ESTIMATE_STEP = 5.0  # estimated starts are shown rounded to this many seconds (no edit for a smaller drift)
DISPATCH_GATHER_SECONDS = 0.02  # wake-ups within this long share one claim
# Jobs claimed at once, at most: a claim's rows become records in one turn of the event loop (~40 µs each),
# and its jobs take their first steps together in the next. A full claim asks for the next one at once.
CLAIM_CHUNK = 100
RELEASE_TIMEOUT = 2.0  # seconds a shutdown may spend giving its unfinished jobs back to the other processes


def new_process_id() -> str:
    """An id unique to this start of this process: host, pid and start time."""
    return f"{socket.gethostname()}:{os.getpid()}:{time.time():.3f}"


@dataclass(frozen=True)
class Ownership:
    """Who this process is among the processes sharing the store, and how it holds its jobs."""

    process_id: str
    shards: tuple[int, ...] = ()
    version: str = ""
    lease_seconds: float = 30.0  # a claimed job is ours until then; renewed every heartbeat
    heartbeat_seconds: float = 5.0  # heartbeat, lease renewal, cancel flags and takeover, this often

    @property
    def alive_seconds(self) -> float:
        """A process whose last heartbeat is older than this is taken for dead."""
        return 3 * self.heartbeat_seconds


class LeaseLostError(Exception):
    """Another process took the job over (this one was taken for dead): stop acting on it, settle nothing."""


class RecoveryIncompleteError(RuntimeError):
    """Some unfinished jobs could not be recovered (each failure is logged); `start()` may be retried."""


@dataclass(frozen=True)
class Delivery:
    """Finished images and what the member will be charged for them."""

    images: list[ImageData]
    charged: int
    available_after: int | None  # None: the member's allowance is unlimited
    # Called with the running total after each message is posted: the job row records it, so that a
    # crash before settling is settled for every image already posted.
    record_posted: Callable[[int], Awaitable[object]] | None = None


class JobPresenter(Protocol):
    """How a front end shows a job. Implemented by the Discord adapter; every method takes the stored job,
    so the same calls work for a live interaction and for a job resumed after a restart."""

    async def show_progress(self, job: JobRecord, progress: Progress) -> None:
        """Show the job's current stage (best effort: failures are logged, not raised)."""

    async def deliver(self, job: JobRecord, delivery: Delivery) -> int:
        """Post the images; return how many were posted. Raise `DeliveryError` when none could be.

        After each message is sent, await `delivery.record_posted(total so far)`."""

    async def show_failure(self, job: JobRecord, error: BotError) -> None:
        """Tell the member the job failed and that its credits were released."""

    async def delivered_count(self, job: JobRecord) -> int | None:
        """After a restart: how many of the job's images the member can already see (None: unknown)."""

    async def member_roles(self, guild_id: int, user_id: int) -> Sequence[int]:
        """The member's role ids (their allowance may come from a role)."""


class JobService:
    """Runs jobs: fair dispatch under concurrency limits, each job from hold to settlement."""

    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        gateway: GatewayClient,
        planner: PollPlanner,
        *,
        limits: ConcurrencyLimits,
        progress_interval: float = 2.0,
        clock: Callable[[], float] = time.time,
        hooks: JobHooks | None = None,
        member_roles_ttl: float = DEFAULT_TTL,
        progress_edits_per_second: float | None = None,
        ownership: Ownership | None = None,
    ) -> None:
        self.ownership = ownership or Ownership(new_process_id())
        self.hooks = hooks or JobHooks()  # the operator's side: kill switch, metrics, alerts (bot.ops)
        self._polls: dict[str, tuple[int, float | None]] = {}  # job id -> (answered polls, detection lag)
        self._to_learn: dict[str, float] = {}  # job id -> its generation's duration, recorded when it ends
        self._store = store
        self._ledger = ledger
        self._gateway = gateway
        self._planner = planner
        self._limits = limits
        self._progress_interval = progress_interval
        self._clock = clock
        self._presenter: JobPresenter | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reporters: dict[str, ProgressReporter] = {}
        self._positions: dict[str, tuple[int, float | None]] = {}  # what the queued reply shows
        self._last_started: dict[tuple[int, int], float] = {}
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []  # the lease keeper and the unacknowledged sweeper
        self._positions_due = 0.0  # when the queued replies' positions may be recomputed next
        self._positions_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._started = asyncio.Event()
        self._cancelled_by_member: set[str] = set()
        self._ending: set[str] = set()  # past their steps (see `_steps`): a cancel flag no longer cuts them
        self._delivering: set[str] = set()  # posting images: a member's cancel no longer interrupts
        # Roles as submitted, for the job's life: a delivery asks Discord only for a job resumed here.
        self._roles = MemberRoles(ttl=member_roles_ttl, clock=time.monotonic)
        # Every job's progress edits share this rate, so that deliveries keep the loop (None: no cap).
        self._progress_gate = RequestRateLimiter(progress_edits_per_second) if progress_edits_per_second else None

    # --- lifetime ----------------------------------------------------------------------------------------

    async def start(self, presenter: JobPresenter) -> None:
        """Recover unfinished jobs from the store, then start dispatching.

        Holds nobody acknowledged are released first, whatever happens next. Each job is recovered on
        its own: one that fails is logged and the others go on; then `RecoveryIncompleteError` is raised
        and nothing is dispatched yet, and a later call retries only what is left.
        """
        if self._stopping or self._started.is_set():
            return
        self._presenter = presenter
        await self._heartbeat()  # alive before anything: no other process takes what we are about to own
        await self._release_unacknowledged()
        failed = await self._recover()
        if failed:
            raise RecoveryIncompleteError(f"{failed} unfinished job(s) could not be recovered yet")
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="job-dispatcher")
        self._background = [
            asyncio.create_task(self._lease_loop(), name="job-leases"),
            asyncio.create_task(self._unacknowledged_loop(), name="job-unacknowledged"),
        ]
        self._wake.set()
        self._started.set()

    async def wait_started(self) -> None:
        """Wait until recovery is done and jobs are being dispatched."""
        await self._started.wait()

    async def shutdown(self, grace: float) -> None:
        """Stop taking jobs; give running jobs `grace` seconds, then leave them persisted for the next start.

        Jobs cut off here are not settled: their rows say where they stopped, and recovery finishes them.
        Every wait here is bounded (`grace`, then STOP_STEP_TIMEOUT per step): a job stuck behind Discord
        or the gateway cannot keep the process alive.
        """
        self._stopping = True
        loops = [t for t in [self._dispatcher, self._positions_task, *self._background] if t is not None]
        for loop in loops:
            loop.cancel()
        if loops:
            await asyncio.wait(loops, timeout=STOP_STEP_TIMEOUT)
        running = list(self._tasks.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                _, stuck = await asyncio.wait(pending, timeout=STOP_STEP_TIMEOUT)
                log.info("left %d running job(s) persisted for the next start", len(pending))
                if stuck:
                    log.warning("%d job task(s) did not stop in time; their rows stay for recovery", len(stuck))
        closing = [asyncio.create_task(reporter.close()) for reporter in self._reporters.values()]
        if closing:
            await asyncio.wait(closing, timeout=STOP_STEP_TIMEOUT)
        self._reporters.clear()
        if self._started.is_set():
            await self._give_back()

    async def _give_back(self) -> None:
        """Release this process's unfinished jobs and its heartbeat, so another process takes them at once
        (bounded: whatever is not given back in time is taken over when its lease expires)."""
        me = self.ownership.process_id

        async def give_back() -> None:
            owned = await self._store.renew_leases(me, lease_seconds=self.ownership.lease_seconds, now=self._clock())
            for job_id in owned:
                await self._store.release_job(job_id, me)
            await self._store.forget_process(me)
            if owned:
                log.info("gave back %d unfinished job(s) to the other processes", len(owned))

        try:
            await asyncio.wait_for(give_back(), timeout=RELEASE_TIMEOUT)
        except TimeoutError:
            log.warning("could not give back every unfinished job in time; their leases will expire")
        except Exception:
            log.warning("could not give back unfinished jobs; their leases will expire", exc_info=True)

    @property
    def accepting(self) -> bool:
        return not self._stopping

    def wake(self) -> None:
        """Look at the queue again now (e.g. after the kill switch is turned off)."""
        self._wake.set()

    @property
    def dispatching(self) -> bool:
        """Whether jobs are being dispatched: recovery done, not shutting down. Before that, the front
        end must not hold credits for new jobs (and the readiness probe says not ready)."""
        return self._started.is_set() and not self._stopping

    @property
    def running_here(self) -> int:
        """Jobs this process is working on right now."""
        return len(self._tasks)

    async def join(self, job_id: str) -> None:
        """Wait until this process has finished working on `job_id` (settled, or left for recovery)."""
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.wait([task])

    # --- member actions ----------------------------------------------------------------------------------

    async def submit(self, job: NewJob, role_ids: Sequence[int]) -> JobRecord:
        """Hold the job's credits and queue it. Raises a `RequestError` (nothing written) when refused.

        A job submitted without `reply_message_id` waits in the queue until `attach_reply` gives it the
        message it will live in: the front end holds first (so that a refusal is its first answer) and
        creates the reply after.
        """
        if self._stopping:
            raise ShuttingDownError()
        if await self.hooks.paused():
            raise GenerationPausedError()
        with job_context(job.id, job.guild_id, job.model):
            try:
                record = await self._ledger.hold_for_job(job, role_ids)
            except RequestError as error:
                await self.hooks.refused(job, error)
                raise
            self.hooks.held(record)
            self._roles.remember(record.id, role_ids)
            log.info(
                "job queued id=%s guild=%s user=%s model=%s count=%s hold=%s",
                record.id,
                record.guild_id,
                record.user_id,
                record.model,
                record.count,
                record.hold_amount,
            )
        self._wake.set()
        return record

    async def attach_reply(self, job_id: str, reply_message_id: int, **interaction: object) -> JobRecord | None:
        """Give a queued job its reply message (and interaction token fields); it may start from now on."""
        record = await self._store.update_job(
            job_id, expect=[JobStatus.QUEUED], reply_message_id=reply_message_id, **interaction
        )
        self._wake.set()
        return record

    async def cancel(self, job_id: str, user_id: int, *, is_admin: bool = False) -> JobRecord:
        """Cancel a queued or running job and release its hold. Only its owner or an admin may.

        A queued job is settled only while it is still queued (compare-and-set): the dispatcher may claim
        it meanwhile. A job running here is interrupted; one claimed but not running here (another
        process, or a claim whose task is about to start) gets `cancel_requested`, which its owner reads
        on its next step (before submitting, after each poll, before posting).
        """
        job = await self._store.get_job(job_id)
        if job is None:
            raise JobNotFoundError()
        if job.user_id != user_id and not is_admin:
            raise NotJobOwnerError()
        if job.is_terminal or job.status == JobStatus.DELIVERING:
            return job  # finished, or its images are being posted: too late to cancel
        task = self._tasks.get(job_id)
        if task is None and job.status == JobStatus.QUEUED:
            cancelled = JobCancelledError()
            if await self._settle_failure(job, cancelled, status=JobStatus.CANCELLED, expect=JobStatus.QUEUED):
                self._wake.set()
                return await self._final(job_id)
            task = self._tasks.get(job_id)  # claimed meanwhile
        if task is not None and job_id in self._delivering:
            return await self._final(job_id)  # it started posting since we read it
        if task is not None:
            self._cancelled_by_member.add(job_id)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
            self._cancelled_by_member.discard(job_id)
            final = await self._final(job_id)
            if not final.is_terminal and not self._stopping:
                # Cancelled before its first step, so its own handler never ran: settle it here.
                await self._settle_failure(final, JobCancelledError(), status=JobStatus.CANCELLED)
        else:
            await self._store.request_cancel(job_id)  # its owner reads it at its next step or renewal
        self._wake.set()
        return await self._final(job_id)

    async def _final(self, job_id: str) -> JobRecord:
        final = await self._store.get_job(job_id)
        assert final is not None
        return final

    async def _check_not_cancelled(self, job_id: str, *expect: JobStatus) -> JobRecord:
        """The job's row, re-read before its next step; `JobCancelledError` if a cancel got there first,
        `LeaseLostError` if another process owns it now."""
        current = await self._store.get_job(job_id)
        if current is not None and not current.is_terminal and current.owner not in (None, self.ownership.process_id):
            raise LeaseLostError(job_id)
        if current is None or current.cancel_requested or (expect and current.status not in expect):
            raise JobCancelledError()
        return current

    # --- dispatch ----------------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            # A burst of requests (or of finished jobs) wakes us many times at once: gather them into one
            # claim rather than one claim each.
            await asyncio.sleep(DISPATCH_GATHER_SECONDS)
            self._wake.clear()
            try:
                await self._dispatch()
            except Exception:
                log.exception("job dispatch failed; retrying on the next wake-up")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _unacknowledged_loop(self) -> None:
        """Release unacknowledged holds on a timer of their own, not on every dispatch."""
        while not self._stopping:
            await asyncio.sleep(max(0.01, UNACKNOWLEDGED_AFTER / 2))
            try:
                await self._release_unacknowledged()
            except Exception:
                log.exception("could not release unacknowledged holds; retrying later")

    async def _release_unacknowledged(self) -> None:
        """Release holds whose job never got its reply message. Store and ledger only: it works while
        Discord is unreachable, so a failed start never keeps such credits."""
        # A queued job without its reply yet is still being acknowledged by the front end: not startable.
        # One that stays so (the acknowledgement failed and its caller was cancelled, or the process died
        # before answering the member) is released: nobody is waiting for it.
        now = self._clock()
        for job in await self._store.active_jobs():
            unacknowledged = job.status == JobStatus.QUEUED and not job.reply_message_id and not job.owner
            if unacknowledged and now - job.created_at > UNACKNOWLEDGED_AFTER:
                log.warning("job id=%s was never acknowledged; releasing its hold", job.id)
                released = await self._ledger.settle(
                    job.id, JobStatus.FAILED, error_key=InterruptedJobError.message_key, expect=JobStatus.QUEUED
                )
                if released is not None:
                    self._roles.forget(job.id)
                    await self.hooks.finished(released, InterruptedJobError())

    @property
    def _run_limits(self) -> RunLimits:
        return RunLimits(self._limits.per_member, self._limits.per_guild, self._limits.global_)

    async def _dispatch(self) -> None:
        """One batched claim for this process's free slots (the store checks every limit across every
        process, in fair order); the queued replies' positions are refreshed on their own, throttled."""
        free = self._limits.global_ - len(self._tasks)
        # The kill switch: queued jobs wait (their members may cancel); running ones go on to the end.
        if free > 0 and not await self.hooks.paused():
            claimed = await self._store.claim_jobs(
                self.ownership.process_id,
                self._run_limits,
                lease_seconds=self.ownership.lease_seconds,
                now=self._clock(),
                most=min(free, CLAIM_CHUNK),
            )
            if len(claimed) == min(free, CLAIM_CHUNK) < free:
                self._wake.set()  # there may be more to claim: the next chunk, once these have started
            for job in claimed:
                self._last_started[(job.guild_id, job.user_id)] = job.started_at or self._clock()
                self._positions.pop(job.id, None)
                self._spawn(job, self._run(job))
        self._schedule_positions()

    def _schedule_positions(self) -> None:
        """Recompute the queued replies' positions at most once per progress interval (one read of the
        active jobs then, not one per wake-up)."""
        if self._positions_task is not None and not self._positions_task.done():
            return
        delay = max(0.0, self._positions_due - self._clock())
        self._positions_task = asyncio.create_task(self._refresh_positions(delay), name="job-positions")

    async def _refresh_positions(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        self._positions_due = self._clock() + min(self._progress_interval, 1.0)
        try:
            await self._show_positions()
        except Exception:
            log.warning("could not refresh the queue's positions", exc_info=True)

    async def _show_positions(self) -> None:
        # One count first: when nothing waits (a burst's every job running), no read of every active row
        # (1,000 records made in one turn of the loop, each second of the burst).
        if not (await self._store.job_counts()).get(JobStatus.QUEUED):
            return
        active = await self._store.active_jobs()
        queued = [j for j in active if j.status == JobStatus.QUEUED and not j.owner and j.reply_message_id]
        if not queued:
            return
        running = [j for j in active if j.status in RUNNING_STATUSES or j.owner]
        # Who was served last, by any process: the store's claim orders a round the same way.
        served = dict(self._last_started)
        for job in running:
            if job.started_at is not None:
                key = (job.guild_id, job.user_id)
                served[key] = max(served.get(key, job.started_at), job.started_at)
        positions = queue_positions(queued, served)
        in_line = sorted(queued, key=lambda j: positions[j.id])
        starts = await self._estimated_starts(in_line, running)
        for job in queued:
            estimate = starts.get(job.id)
            shown = (positions[job.id], None if estimate is None else round(estimate / ESTIMATE_STEP) * ESTIMATE_STEP)
            if self._positions.get(job.id) != shown:
                self._positions[job.id] = shown
                self._reporter(job).update("queued", position=shown[0], starts_at=shown[1])

    # --- ownership: heartbeat, leases, cancel flags, takeover -----------------------------------------------

    async def _heartbeat(self) -> None:
        own = self.ownership
        await self._store.heartbeat(own.process_id, own.shards, own.version, now=self._clock())

    async def _lease_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.ownership.heartbeat_seconds)
            try:
                await self._keep_leases()
            except Exception:
                log.exception("heartbeat or lease renewal failed; retrying on the next beat")

    async def _keep_leases(self) -> None:
        """Say we are alive, renew our leases, act on cancel flags, and take over what dead processes left."""
        own = self.ownership
        await self._heartbeat()
        owned = await self._store.renew_leases(own.process_id, lease_seconds=own.lease_seconds, now=self._clock())
        for job_id, task in list(self._tasks.items()):
            if job_id not in owned and not task.done():
                current = await self._store.get_job(job_id)
                if current is not None and not current.is_terminal and current.owner != own.process_id:
                    log.warning("job id=%s was taken over by %s; stopping here", job_id, current.owner)
                    task.cancel()  # not settled here: its new owner finishes it
        for job_id in await self._store.cancels_requested(own.process_id):
            self._interrupt_for_cancel(job_id)
        await self._take_over()
        self._wake.set()  # jobs queued by other processes (or slots they freed): claim at least once a beat

    def _interrupt_for_cancel(self, job_id: str) -> None:
        """A cancel set by another process: stop the job here and settle it once, as a member's cancel."""
        task = self._tasks.get(job_id)
        if task is None or task.done() or job_id in self._delivering or job_id in self._cancelled_by_member:
            return
        if job_id in self._ending:
            return  # it saw the cancel itself (or ended otherwise) and is settling: cutting that would lose it
        log.info("job id=%s: cancel requested elsewhere; stopping it", job_id)
        self._cancelled_by_member.add(job_id)
        task.cancel()

    async def _take_over(self) -> int:
        """Take the jobs of dead processes (and started jobs nobody owns) and resume them as recovery does.

        Returns how many could not be resumed: each is logged and given back, so a later pass retries it."""
        own = self.ownership
        taken = await self._store.take_over_jobs(
            own.process_id, lease_seconds=own.lease_seconds, alive_seconds=own.alive_seconds, now=self._clock()
        )
        failed = 0
        for job in taken:
            if job.id in self._tasks:
                continue
            # Claimed but never submitted (QUEUED: claimed by a version before the claim set SUBMITTING):
            # its POST never went out, so it goes back in line and the claim starts it.
            if job.status == JobStatus.QUEUED or (job.status == JobStatus.SUBMITTING and job.submitted_at is None):
                await self._store.release_job(job.id, own.process_id)
                self._wake.set()
                continue
            try:
                await self._recover_one(job)
            except Exception:
                failed += 1
                log.exception("could not recover job id=%s (status %s); will retry", job.id, job.status)
                with contextlib.suppress(Exception):
                    await self._store.release_job(job.id, own.process_id)
        return failed

    async def _estimated_starts(self, queued: list[JobRecord], running: list[JobRecord]) -> dict[str, float]:
        """When each queued job should start, from the learned durations of what runs and waits."""
        if not queued:
            return {}
        learned = {model: await self._planner.expected_seconds(model) for model in {j.model for j in queued + running}}
        default = self._planner.default_expected
        return estimate_starts(queued, running, lambda m: learned.get(m) or default, self._limits, self._clock())

    def _spawn(self, job: JobRecord, work: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work, name=f"job-{job.id}")  # type: ignore[arg-type]
        self._tasks[job.id] = task

        def _done(_: asyncio.Task[None]) -> None:
            self._tasks.pop(job.id, None)
            self._positions.pop(job.id, None)
            self._wake.set()

        task.add_done_callback(_done)

    def _reporter(self, job: JobRecord) -> ProgressReporter:
        reporter = self._reporters.get(job.id)
        if reporter is None:
            presenter = self._require_presenter()

            async def send(progress: Progress) -> None:
                await presenter.show_progress(job, progress)

            gate = self._progress_gate.acquire if self._progress_gate is not None else None
            reporter = ProgressReporter(send, interval=self._progress_interval, gate=gate)
            self._reporters[job.id] = reporter
        return reporter

    def _require_presenter(self) -> JobPresenter:
        if self._presenter is None:
            raise RuntimeError("JobService.start() was not called")
        return self._presenter

    # --- one job -----------------------------------------------------------------------------------------

    async def _run(self, job: JobRecord, *, resume: bool = False) -> None:
        """Take a claimed job to its end. Cancellation by shutdown leaves the row for recovery."""
        set_job_context(job.id, job.guild_id, job.model)  # this task is the job's: every line carries it
        reporter = self._reporter(job)
        try:
            await self._steps(job, reporter, resume=resume)
        except LeaseLostError:
            await reporter.close()
            log.warning("job id=%s is owned by another process now; leaving it to that one", job.id)
        except asyncio.CancelledError:
            await reporter.close()
            if job.id in self._cancelled_by_member:
                self._cancelled_by_member.discard(job.id)
                await self._settle_failure(job, JobCancelledError(), status=JobStatus.CANCELLED)
                return
            raise  # shutdown: the job stays as stored and is resumed on the next start
        except JobCancelledError as error:
            await reporter.close()
            log.info("job cancelled id=%s (seen on its next step)", job.id)
            await self._settle_failure(job, error, status=JobStatus.CANCELLED)
        except BotError as error:
            await reporter.close()
            log.info("job failed id=%s model=%s error=%s", job.id, job.model, type(error).__name__)
            await self._settle_failure(job, error)
        except Exception as error:
            await reporter.close()
            log.exception("job crashed id=%s", job.id)
            await self._settle_failure(job, BotError(type(error).__name__))
        finally:
            self._ending.discard(job.id)
            self._reporters.pop(job.id, None)
            self._delivering.discard(job.id)
            self._polls.pop(job.id, None)
            self._roles.forget(job.id)
            await self._learn(job)

    async def _steps(self, job: JobRecord, reporter: ProgressReporter, *, resume: bool) -> None:
        """The job's steps: its images, then their delivery. However they end, the job is ending from
        then on (settling, telling the member, or leaving it to another process): a cancel flag seen by the
        lease loop must not cut that (`_interrupt_for_cancel`)."""
        try:
            images, completed_at = await self._obtain_images(job, reporter, resume=resume)
            await reporter.close()
            await self._deliver(job, images, completed_at)
        finally:
            self._ending.add(job.id)

    async def _learn(self, job: JobRecord) -> None:
        """Record how long the job's generation took, for the poll planner, once the job is over.

        Not on the way from the gateway's answer to the member: a thousand jobs finishing together would
        each wait for this write's commit before their download."""
        seconds = self._to_learn.pop(job.id, None)
        if seconds is None:
            return
        try:
            await self._planner.record(job.model, seconds)
        except Exception:
            log.warning("job id=%s: could not record its duration for the poll planner", job.id, exc_info=True)

    async def _obtain_images(
        self, job: JobRecord, reporter: ProgressReporter, *, resume: bool
    ) -> tuple[list[ImageData], float | None]:
        """The job's images, and when the gateway said an async job's were ready (None for sync)."""
        fresh = not (resume and job.operation_id)  # submitted here and now, not resumed after a restart
        if fresh:
            # The claim made it SUBMITTING; from this mark on its POST may have gone out (a takeover refunds
            # it rather than sending it twice). A cancel that landed since the claim, or a new owner, and
            # the gateway is never reached.
            if not await self._store.mark_submitted(job.id, self.ownership.process_id, now=self._clock()):
                current = await self._store.get_job(job.id)
                if current is None or current.is_terminal:
                    raise JobCancelledError()  # settled elsewhere: settling again changes nothing
                if current.cancel_requested and current.owner == self.ownership.process_id:
                    raise JobCancelledError()
                raise LeaseLostError(job.id)  # taken over (or put back in line) meanwhile: not ours to settle
            # A sync model generates while the POST is open (15-30 s for some): show the clock running,
            # and when it should be done, from its learned durations.
            began = self._clock()
            if job.mode == "sync":
                expected = await self._planner.expected_seconds(job.model)
                reporter.update("generating", ends_at=None if expected is None else began + expected)
            else:
                reporter.update("submitting")
            submission = await self._gateway.submit(job.model, job.prompt, job.params)
            if submission.images is not None:
                self._to_learn[job.id] = self._clock() - began  # what the next estimate learns from
                return submission.images, None
            assert submission.operation_id is not None
            now = self._clock()
            updated = await self._store.update_job(
                job.id,
                expect=[JobStatus.SUBMITTING],
                status=JobStatus.POLLING,
                operation_id=submission.operation_id,
                submitted_at=now,
            )
            if updated is None:
                raise JobCancelledError()
            job = updated
        assert job.operation_id is not None
        submitted_at = job.submitted_at or self._clock()
        schedule = await self._planner.schedule_for(job.model)
        ends_at = submitted_at + schedule.expected if schedule.spread is not None else None  # None: no history
        reporter.update("generating", elapsed=max(0.0, self._clock() - submitted_at), ends_at=ends_at)
        job_id = job.id
        answers: list[float] = []  # when each poll of this wait was answered, seconds since submit

        async def after_poll(answered: float) -> None:
            answers.append(answered)
            self._polls[job_id] = (self._polls.get(job_id, (0, None))[0] + 1, None)
            await self._check_not_cancelled(job_id)  # a cancel from another process

        result = await self._gateway.wait_for_result(
            job.operation_id, job.model, schedule, elapsed=max(0.0, self._clock() - submitted_at), on_poll=after_poll
        )
        # The gateway's estimate excludes our own detection lag, which would teach the schedule to poll late.
        duration = result.finished_after if result.finished_after is not None else self._clock() - submitted_at
        lag = max(0.0, self._clock() - submitted_at - duration) if result.finished_after is not None else None
        self._polls[job.id] = (self._polls.get(job.id, (0, None))[0], lag)
        if fresh and len(answers) == 1:
            # Done at its first look: all we know is that it took at most that long. The gateway's midpoint
            # of (submit, first poll] would teach the schedule half the duration when the first poll lands
            # just after completion (every job of a model that finishes together does), and the next
            # jobs would be polled early, then, past the "usual" time, at the widest interval.
            duration = answers[0]
        self._to_learn[job.id] = max(0.0, duration)
        completed_at = self._clock()  # stored with the DELIVERING step: one write per job fewer
        if result.images:
            return result.images, completed_at
        reporter.update("downloading", count=len(result.urls))
        return await self._gateway.download_all(result.urls), completed_at

    async def _deliver(self, job: JobRecord, images: list[ImageData], completed_at: float | None = None) -> None:
        presenter = self._require_presenter()
        images = images[: job.count]  # never charge for more than was asked
        await self._check_not_cancelled(job.id)
        self._delivering.add(job.id)
        stamp = {} if completed_at is None else {"completed_at": completed_at}
        delivering = await self._store.update_job(
            job.id, expect=[JobStatus.SUBMITTING, JobStatus.POLLING], status=JobStatus.DELIVERING, **stamp
        )
        if delivering is None:
            await self._check_not_cancelled(job.id)  # taken over meanwhile: LeaseLostError, nothing settled
            raise JobCancelledError()
        charged = len(images) * job.price
        roles = await self._roles.roles_for(job.id, job.guild_id, job.user_id, presenter.member_roles)
        balance = await self._ledger.balance(job.guild_id, job.user_id, roles)
        # Settling turns this job's hold into `charged` spent and gives the rest back.
        available_after = None if balance.available is None else balance.available + job.hold_amount - charged

        async def record_posted(posted: int) -> None:
            try:
                await self._store.update_job(job.id, expect=[JobStatus.DELIVERING], posted_count=posted)
            except Exception:  # the images are out: a failed note must not turn the delivery into a refund
                log.warning("job id=%s: could not record %d posted image(s)", job.id, posted, exc_info=True)

        try:
            delivered = await presenter.deliver(
                delivering, Delivery(images, charged, available_after, record_posted=record_posted)
            )
        except DeliveryError as error:
            log.warning("job id=%s could not be delivered (%s); releasing its hold", job.id, error.detail)
            await self._settle_failure(job, error)
            return
        settled = await self._ledger.settle(job.id, JobStatus.DELIVERED, delivered_count=delivered)
        if settled is not None:
            log.info("job delivered id=%s model=%s images=%s charged=%s", job.id, job.model, delivered, settled.charged)
            polls, lag = self._polls.get(job.id, (0, None))
            await self.hooks.finished(settled, None, polls=polls, detection_lag=lag)

    async def _settle_failure(
        self,
        job: JobRecord,
        error: BotError,
        *,
        status: JobStatus = JobStatus.FAILED,
        expect: JobStatus | None = None,
    ) -> bool:
        """Release the job's hold and tell the member; False when it was settled elsewhere (or, with
        `expect`, was no longer in that status), in which case nothing happened."""
        settled = await self._ledger.settle(
            job.id, status, error_key=error.message_key, error_detail=(error.detail or None), expect=expect
        )
        if settled is None:
            return False  # already settled elsewhere (the member has been told), or claimed meanwhile
        self._roles.forget(job.id)
        # Only now: a job claimed meanwhile keeps its reporter.
        reporter = self._reporters.pop(job.id, None)
        if reporter is not None:
            await reporter.close()  # no late "Queued" edit may land on top of the failure
        await self.hooks.finished(settled, error, polls=self._polls.get(job.id, (0, None))[0])
        try:
            # The stored token is cleared at settlement; the failure edit may still use it once.
            shown = replace(settled, interaction_token=job.interaction_token)
            await self._require_presenter().show_failure(shown, error)
        except Exception:
            log.warning("could not tell the member that job %s failed", job.id, exc_info=True)
        return True

    # --- recovery ----------------------------------------------------------------------------------------

    async def _recover(self) -> int:
        """Finish what a previous run left: resume polls, settle delivered jobs, refund interrupted ones.

        Returns how many jobs could not be recovered (each is logged and left as stored)."""
        # Only jobs no live process owns: those of dead processes (lease expired), given back, or left
        # by a run before leases. A live process's jobs are its own.
        return await self._take_over()

    async def _recover_one(self, job: JobRecord) -> None:
        presenter = self._require_presenter()
        if job.status == JobStatus.DELIVERING:
            # What the row says was posted (follow-ups included), or what the reply shows when the
            # crash came between posting a message and recording it.
            seen = max(job.posted_count, await presenter.delivered_count(job) or 0)
            if seen:
                settled = await self._ledger.settle(job.id, JobStatus.DELIVERED, delivered_count=seen)
                log.info("recovered job id=%s: already delivered %s image(s)", job.id, seen)
                if settled is not None:
                    await self.hooks.finished(settled, None)
                return
            if job.mode == "async" and job.operation_id:
                # Not posted yet: fetch the finished operation again and deliver it once.
                job = (
                    await self._store.update_job(job.id, expect=[JobStatus.DELIVERING], status=JobStatus.POLLING) or job
                )
        if job.status in (JobStatus.POLLING, JobStatus.DELIVERING) and job.operation_id:
            log.info("resuming job id=%s operation=%s", job.id, job.operation_id)
            self._spawn(job, self._run(job, resume=True))
            return
        # A sync request (or a POST whose answer never got stored) was cut off: the gateway may
        # have charged the operator, but the member got nothing, so they get their credits back.
        log.warning(
            "job id=%s model=%s was interrupted before the gateway answered; refunding "
            "(the gateway may have charged the operator)",
            job.id,
            job.model,
        )
        await self._settle_failure(job, InterruptedJobError())


__all__ = ["Delivery", "JobPresenter", "JobService", "Progress", "RecoveryIncompleteError", "Stage"]
