"""Progress reports: coalesced to the latest state, never repeated, never after close."""

from __future__ import annotations

import asyncio

import pytest

from bot.jobs.progress import Progress, ProgressReporter


class Recorder:
    """Collects what the reporter sends and lets a test wait for the n-th send."""

    def __init__(self) -> None:
        self.sent: list[Progress] = []
        self._changed = asyncio.Condition()

    async def send(self, progress: Progress) -> None:
        async with self._changed:
            self.sent.append(progress)
            self._changed.notify_all()

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.sent) >= count), timeout)


async def test_rapid_updates_collapse_to_the_latest_state() -> None:
    recorder = Recorder()
    reporter = ProgressReporter(recorder.send, interval=0.2)
    reporter.update("queued", position=3)
    await recorder.wait_for(1)
    reporter.update("queued", position=2)
    reporter.update("queued", position=1)
    reporter.update("submitting")
    await recorder.wait_for(2)
    await reporter.close()
    assert [p.stage for p in recorder.sent] == ["queued", "submitting"]
    assert recorder.sent[0].position == 3


async def test_unchanged_state_is_not_sent_again() -> None:
    recorder = Recorder()
    reporter = ProgressReporter(recorder.send, interval=0.01)
    reporter.update("submitting")
    await recorder.wait_for(1)
    reporter.update("submitting")
    reporter.update("downloading", count=2)
    await recorder.wait_for(2)
    await reporter.close()
    assert [p.stage for p in recorder.sent] == ["submitting", "downloading"]


async def test_generating_counts_elapsed_seconds_from_the_anchor() -> None:
    now = [1000.0]
    recorder = Recorder()
    reporter = ProgressReporter(recorder.send, interval=0.01, clock=lambda: now[0])
    reporter.update("generating", elapsed=42.4)
    await recorder.wait_for(1)
    assert recorder.sent[0].elapsed == 42
    now[0] += 3.0
    reporter.update("generating")  # same stage: the anchor stays
    await recorder.wait_for(2)
    await reporter.close()
    assert recorder.sent[1].elapsed == 45


async def test_close_waits_for_an_edit_in_flight_and_stops_reporting() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[Progress] = []

    async def slow_send(progress: Progress) -> None:
        started.set()
        await release.wait()
        finished.append(progress)

    reporter = ProgressReporter(slow_send, interval=0.01)
    reporter.update("submitting")
    await asyncio.wait_for(started.wait(), 5)
    closing = asyncio.create_task(reporter.close())
    await asyncio.sleep(0)  # let close() start waiting
    assert not closing.done()
    release.set()
    await asyncio.wait_for(closing, 5)
    assert [p.stage for p in finished] == ["submitting"]
    reporter.update("downloading")  # after close: ignored
    assert reporter._task is None


async def test_a_failing_send_does_not_stop_reporting() -> None:
    calls: list[str] = []
    failed, done = asyncio.Event(), asyncio.Event()

    async def flaky(progress: Progress) -> None:
        calls.append(progress.stage)
        if len(calls) == 1:
            failed.set()
            raise RuntimeError("discord said no")
        done.set()

    reporter = ProgressReporter(flaky, interval=0.01)
    reporter.update("submitting")
    await asyncio.wait_for(failed.wait(), 5)
    reporter.update("downloading")
    await asyncio.wait_for(done.wait(), 5)
    await reporter.close()
    assert calls == ["submitting", "downloading"]


async def test_close_does_not_swallow_a_cancellation_of_its_caller() -> None:
    # A member's Cancel (or a shutdown) that lands while the job waits in close() must reach the job.
    recorder = Recorder()
    reporter = ProgressReporter(recorder.send, interval=30.0)  # the reporter task sleeps between edits
    reporter.update("submitting")
    await recorder.wait_for(1)
    after_close: list[str] = []

    async def job() -> None:
        await reporter.close()
        after_close.append("went on")  # a swallowed cancel would get here

    task = asyncio.create_task(job())
    await asyncio.sleep(0)  # close() now waits for the reporter task to end
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert after_close == []


class Turns:
    """A gate that lets one edit through per `grant()` and tells when someone is waiting for a turn."""

    def __init__(self) -> None:
        self._turns = asyncio.Queue[None]()
        self.waiting = asyncio.Event()

    async def __call__(self) -> None:
        self.waiting.set()
        await self._turns.get()
        self.waiting.clear()

    def grant(self) -> None:
        self._turns.put_nowait(None)


async def test_a_shared_gate_paces_edits_and_each_turn_sends_the_latest_state() -> None:
    recorder, turns = Recorder(), Turns()
    reporter = ProgressReporter(recorder.send, interval=0.0, gate=turns)
    reporter.update("queued", position=3)
    await asyncio.wait_for(turns.waiting.wait(), 5)
    assert recorder.sent == [], "no edit without a turn"
    reporter.update("queued", position=1)  # changed while waiting: the turn sends this one
    turns.grant()
    await recorder.wait_for(1)
    assert [p.position for p in recorder.sent] == [1]
    await reporter.close()


async def test_close_does_not_wait_for_a_turn() -> None:
    recorder, turns = Recorder(), Turns()
    reporter = ProgressReporter(recorder.send, interval=0.0, gate=turns)
    reporter.update("submitting")
    await asyncio.wait_for(turns.waiting.wait(), 5)
    await asyncio.wait_for(reporter.close(), 5)  # the job's result must not queue behind other jobs' edits
    assert recorder.sent == []
