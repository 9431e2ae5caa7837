"""Estimated starts of queued jobs: the dispatcher replayed over expected durations."""

from __future__ import annotations

from typing import Any

from bot.jobs.scheduling import ConcurrencyLimits
from bot.jobs.waiting import estimate_starts
from bot.store.records import JobRecord, JobStatus

NOW = 1_000.0


def _job(
    job_id: str, user: int, *, at: float = 0.0, model: str = "m", status: JobStatus = JobStatus.QUEUED, **fields: Any
) -> JobRecord:
    """A job of `user` created `at` seconds into the test's history (fair order breaks ties by age)."""
    return JobRecord(
        id=job_id,
        guild_id=1,
        channel_id=2,
        user_id=user,
        model=model,
        prompt="p",
        count=1,
        price=1,
        params={},
        options={},
        mode="async",
        status=status,
        hold_amount=1,
        created_at=NOW - 100 + at,
        **fields,
    )


def test_a_members_limit_makes_their_next_job_wait_for_their_running_one() -> None:
    limits = ConcurrencyLimits(per_member=1, per_guild=8, global_=16)
    running = [_job("r", 1, status=JobStatus.POLLING, started_at=NOW - 3)]
    queued = [_job("q1", 1, at=1), _job("q2", 2, at=2), _job("q3", 1, at=3)]
    starts = estimate_starts(queued, running, lambda model: 10.0, limits, NOW)
    assert starts == {"q2": NOW, "q1": NOW + 7.0, "q3": NOW + 17.0}


def test_a_global_limit_shares_slots_in_fair_order_and_models_take_their_own_time() -> None:
    limits = ConcurrencyLimits(per_member=4, per_guild=4, global_=1)
    queued = [_job("slow", 1, at=1, model="slow"), _job("fast", 2, at=2, model="fast"), _job("next", 3, at=3)]
    durations = {"slow": 30.0, "fast": 5.0, "m": 1.0}
    starts = estimate_starts(queued, [], durations.__getitem__, limits, NOW)
    assert starts == {"slow": NOW, "fast": NOW + 30.0, "next": NOW + 35.0}


def test_a_job_past_its_expected_time_is_assumed_to_end_soon() -> None:
    limits = ConcurrencyLimits(per_member=1, per_guild=1, global_=1)
    running = [_job("late", 1, status=JobStatus.POLLING, started_at=NOW - 60)]
    starts = estimate_starts([_job("q", 2)], running, lambda model: 10.0, limits, NOW)
    assert starts == {"q": NOW + 1.0}
