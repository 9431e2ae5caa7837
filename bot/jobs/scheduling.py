"""Fair dispatch of queued jobs: per-member, per-server and global limits, round-robin between members.

Pure functions over job records, so the order is easy to test and the same everywhere. The queue itself
is the set of QUEUED rows in the store; nothing here is state that a restart could lose.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bot.store.records import JobRecord


@dataclass(frozen=True)
class ConcurrencyLimits:
    """How many jobs may run at once: per member, per server, and in the whole bot."""

    per_member: int
    per_guild: int
    global_: int


def _member_key(job: JobRecord) -> tuple[int, int]:
    return (job.guild_id, job.user_id)


def _asked(job: JobRecord) -> tuple[int, float, str]:
    """When the member asked: the interaction's snowflake (increasing, unique), then creation time. Not
    the order concurrent handlers reached the hold, which a slow lookup in one of them can reorder."""
    return (job.request_id or 0, job.created_at, job.id)


def fair_order(queued: Iterable[JobRecord], last_started: Mapping[tuple[int, int], float]) -> list[JobRecord]:
    """The order in which queued jobs would start if slots freed one at a time.

    Round-robin: every member's first queued job comes before anyone's second. Within a round, the member
    served longest ago goes first (never-served members first, then by their job's age), so one member's
    burst cannot push others back.
    """
    by_member: dict[tuple[int, int], list[JobRecord]] = {}
    for job in sorted(queued, key=_asked):
        by_member.setdefault(_member_key(job), []).append(job)

    def key(item: tuple[int, JobRecord]) -> tuple[int, float, tuple[int, float, str]]:
        rank, job = item
        return (rank, last_started.get(_member_key(job), float("-inf")), _asked(job))

    ranked = [(rank, job) for jobs in by_member.values() for rank, job in enumerate(jobs)]
    return [job for _, job in sorted(ranked, key=key)]


def pick_jobs_to_start(
    queued: Iterable[JobRecord],
    running: Iterable[JobRecord],
    limits: ConcurrencyLimits,
    last_started: Mapping[tuple[int, int], float],
) -> list[JobRecord]:
    """Which queued jobs may start now, in fair order, without breaking any concurrency limit."""
    running = list(running)
    per_member = Counter(_member_key(j) for j in running)
    per_guild = Counter(j.guild_id for j in running)
    total = len(running)
    chosen: list[JobRecord] = []
    # Re-rank after each pick so that a member who just got a slot goes to the back of the round.
    served = dict(last_started)
    pending = list(queued)
    tick = max(served.values(), default=0.0)
    while total < limits.global_ and pending:
        for job in fair_order(pending, served):
            member = _member_key(job)
            if per_member[member] < limits.per_member and per_guild[job.guild_id] < limits.per_guild:
                break
        else:
            break
        chosen.append(job)
        pending.remove(job)
        per_member[member] += 1
        per_guild[job.guild_id] += 1
        total += 1
        tick += 1.0
        served[member] = tick
    return chosen


def queue_positions(queued: Iterable[JobRecord], last_started: Mapping[tuple[int, int], float]) -> dict[str, int]:
    """1-based position of each queued job in the fair order."""
    return {job.id: index for index, job in enumerate(fair_order(queued, last_started), start=1)}
