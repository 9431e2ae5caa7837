"""When will each queued job start? A small simulation of the dispatcher over expected durations.

The dispatcher starts queued jobs, in fair order, whenever the concurrency limits allow; a running job
frees its slot after its model's expected duration (what the poll planner learned). Replaying that with
the same `pick_jobs_to_start` gives each queued job an estimated start that accounts for the member,
server and global limits, not only for the job's place in line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bot.jobs.scheduling import ConcurrencyLimits, pick_jobs_to_start
from bot.store.records import JobRecord

MAX_SIMULATED = 200  # jobs further back get no estimate (the queue is never this long in practice)
MIN_REMAINING = 1.0  # a job past its expected time is assumed to finish soon, never "already"


def estimate_starts(
    queued: Sequence[JobRecord],
    running: Sequence[JobRecord],
    expected: Callable[[str], float],
    limits: ConcurrencyLimits,
    now: float,
) -> dict[str, float]:
    """Estimated start (epoch seconds) of each queued job; `expected(model)` is its usual duration."""
    active: list[tuple[float, JobRecord]] = []  # (seconds from now until it ends, job)
    for job in running:
        elapsed = now - (job.started_at or now)
        active.append((max(MIN_REMAINING, expected(job.model) - elapsed), job))
    pending = list(queued[:MAX_SIMULATED])
    starts: dict[str, float] = {}
    t = 0.0
    while pending:
        for job in pick_jobs_to_start(pending, [j for _, j in active], limits, {}):
            starts[job.id] = now + t
            active.append((t + expected(job.model), job))
            pending.remove(job)
        if not pending or not active:
            break
        t = min(end for end, _ in active)
        active = [(end, job) for end, job in active if end > t]
    return starts
