"""Fair dispatch: round-robin between members under per-member, per-server and global limits."""

from __future__ import annotations

from bot.jobs.scheduling import ConcurrencyLimits, fair_order, pick_jobs_to_start, queue_positions
from bot.store.records import JobRecord, JobStatus


def job(job_id: str, user: int, created: float, *, guild: int = 1, status: JobStatus = JobStatus.QUEUED) -> JobRecord:
    return JobRecord(
        id=job_id,
        guild_id=guild,
        channel_id=10,
        user_id=user,
        model="m",
        prompt="p",
        count=1,
        price=1,
        params={},
        options={},
        mode="sync",
        status=status,
        hold_amount=1,
        created_at=created,
    )


def burst() -> list[JobRecord]:
    """Member 1 fires five jobs, then members 2 and 3 fire five each."""
    jobs = [job(f"a{i}", 1, i) for i in range(5)]
    jobs += [job(f"b{i}", 2, 10 + i) for i in range(5)]
    jobs += [job(f"c{i}", 3, 20 + i) for i in range(5)]
    return jobs


def test_round_robin_order_lets_later_members_through_a_burst() -> None:
    order = [j.id for j in fair_order(burst(), {})]
    assert order == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2", "a3", "b3", "c3", "a4", "b4", "c4"]


def test_one_slot_at_a_time_serves_members_in_turn() -> None:
    limits = ConcurrencyLimits(per_member=2, per_guild=10, global_=1)
    queued, started, last = burst(), [], {}
    clock = 100.0
    while queued:
        (picked,) = pick_jobs_to_start(queued, [], limits, last)
        started.append(picked.id)
        queued.remove(picked)
        clock += 1
        last[(picked.guild_id, picked.user_id)] = clock
    assert started == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2", "a3", "b3", "c3", "a4", "b4", "c4"]


def test_per_member_limit_holds_back_a_busy_member() -> None:
    limits = ConcurrencyLimits(per_member=2, per_guild=10, global_=10)
    queued = [job(f"a{i}", 1, i) for i in range(5)] + [job("b0", 2, 9)]
    picked = [j.id for j in pick_jobs_to_start(queued, [], limits, {})]
    assert sorted(picked) == ["a0", "a1", "b0"]


def test_running_jobs_count_against_the_limits() -> None:
    limits = ConcurrencyLimits(per_member=2, per_guild=3, global_=10)
    running = [job("r1", 1, 0, status=JobStatus.POLLING), job("r2", 2, 0, status=JobStatus.SUBMITTING)]
    queued = [job("a", 1, 1), job("b", 2, 2), job("c", 3, 3), job("d", 4, 4)]
    picked = [j.id for j in pick_jobs_to_start(queued, running, limits, {})]
    assert picked == ["a"]  # the server has room for one more


def test_per_guild_limit_does_not_block_other_servers() -> None:
    limits = ConcurrencyLimits(per_member=5, per_guild=1, global_=10)
    queued = [job("g1a", 1, 0, guild=1), job("g1b", 2, 1, guild=1), job("g2a", 3, 2, guild=2)]
    assert [j.id for j in pick_jobs_to_start(queued, [], limits, {})] == ["g1a", "g2a"]


def test_global_limit_caps_everything() -> None:
    limits = ConcurrencyLimits(per_member=5, per_guild=5, global_=2)
    assert len(pick_jobs_to_start(burst(), [job("x", 9, 0, status=JobStatus.POLLING)], limits, {})) == 1


def test_queue_positions_follow_the_fair_order() -> None:
    positions = queue_positions(burst(), {})
    assert positions["a0"] == 1 and positions["b0"] == 2 and positions["c0"] == 3 and positions["a1"] == 4
    assert sorted(positions.values()) == list(range(1, 16))
