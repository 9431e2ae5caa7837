"""Throttled progress reports for one job: the latest state, at most one edit per interval, only on change.

Discord rate-limits edits per interaction token, and a member only needs the latest state, so the reporter
keeps one "current" value and a single task that sends it when it differs from what was last sent. All
reporters may share a `gate` (a rate limiter): with a thousand jobs running, their progress edits would
otherwise take the event loop's time from the deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal

log = logging.getLogger(__name__)

Stage = Literal["queued", "submitting", "generating", "downloading"]


@dataclass(frozen=True)
class Progress:
    """What a member is shown while a job works."""

    stage: Stage
    elapsed: int = 0  # whole seconds since the request reached the gateway (generating only)
    position: int | None = None  # place in the queue (queued only)
    count: int = 1  # images being fetched (downloading only)
    starts_at: float | None = None  # estimated start, epoch seconds (queued only)
    ends_at: float | None = None  # expected end from the model's learned durations, epoch seconds (generating)


class ProgressReporter:
    """Sends a job's progress through `send`, throttled to one call per `interval` seconds.

    `update()` never blocks and never raises: progress is best effort, the result edit is not sent here.
    """

    def __init__(
        self,
        send: Callable[[Progress], Awaitable[None]],
        *,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        gate: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._send = send
        # Awaited before each edit: a turn among every job's progress edits (a shared rate limiter).
        self._gate = gate
        self._interval = interval
        self._clock = clock
        self._current: Progress | None = None
        self._generating_since: float | None = None
        self._last_sent: Progress | None = None
        self._changed = asyncio.Event()
        self._sending = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def update(
        self,
        stage: Stage,
        *,
        position: int | None = None,
        count: int = 1,
        elapsed: float | None = None,
        starts_at: float | None = None,
        ends_at: float | None = None,
    ) -> None:
        """Set the current stage. For "generating", `elapsed` anchors the clock (resumed jobs)."""
        if stage == "generating":
            if self._generating_since is None or elapsed is not None:
                self._generating_since = self._clock() - (elapsed or 0.0)
        self._current = Progress(
            stage=stage,
            position=position if stage == "queued" else None,
            count=count,
            starts_at=starts_at if stage == "queued" else None,
            ends_at=ends_at if stage == "generating" else None,
        )
        self._changed.set()
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="progress-reporter")

    def _snapshot(self) -> Progress | None:
        current = self._current
        if current is not None and current.stage == "generating" and self._generating_since is not None:
            current = replace(current, elapsed=int(self._clock() - self._generating_since))
        return current

    async def _run(self) -> None:
        while True:
            progress = self._snapshot()
            if progress is not None and progress != self._last_sent:
                if self._gate is not None:
                    # Waiting for the turn holds no lock: `close()` cancels the wait instead of queueing
                    # the final edit behind every other job's progress. The turn sends the latest state.
                    await self._gate()
                    progress = self._snapshot() or progress
                    if progress == self._last_sent:
                        continue
                self._last_sent = progress
                async with self._sending:
                    try:
                        await self._send(progress)
                    except Exception:
                        log.warning("progress edit failed", exc_info=True)
                await asyncio.sleep(self._interval)
                continue
            self._changed.clear()
            if progress is not None and progress.stage == "generating":
                # The elapsed counter changes every second even when nothing else does.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=1.0)
            else:
                await self._changed.wait()

    async def close(self) -> None:
        """Stop reporting before the final edit.

        An edit already on the wire is allowed to finish first, so that it cannot land after (and hide)
        the result. A cancellation of the caller is never swallowed: only the reporter's own task is
        awaited quietly (`asyncio.wait` does not raise its result), so a member's Cancel or a shutdown
        that lands here still reaches the job.
        """
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            async with self._sending:
                task.cancel()
            await asyncio.wait([task])
