"""The adaptive poll schedule and the planner over the store."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from pydantic import SecretStr

from bot.config import Settings
from bot.generation.polling import PollPlanner, PollSchedule

MIN, MAX = 0.25, 10.0


def fitted(durations: list[float], **kwargs: float) -> PollSchedule:
    options = {"default_expected": 20.0, "min_interval": MIN, "max_interval": MAX}
    options.update(kwargs)
    return PollSchedule.from_history(durations, **options)  # type: ignore[arg-type]


def lognormal(median: float, spread: float, n: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [median * math.exp(rng.gauss(0, spread)) for _ in range(n)]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_no_history_first_poll_early_then_growing() -> None:
    schedule = fitted([])
    times = schedule.poll_times(200)
    assert times[0] == pytest.approx(1.0)  # a twentieth of the default expectation (20 s)
    intervals = gaps(times)
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(intervals))
    assert max(intervals) == pytest.approx(MAX)
    # A job finishing at 6 s is found within 25 % of its time.
    first_after = next(t for t in times if t >= 6.0)
    assert first_after - 6.0 <= 0.25 * first_after


@pytest.mark.parametrize("duration", [1.5, 3.0, 6.0, 20.0, 45.0])
def test_no_history_polls_learn_a_fair_duration_even_for_short_jobs(duration: float) -> None:
    """What a model's first jobs teach the planner is the midpoint of the last "pending" and the "done"
    poll: a first poll after a short job's end (5 s for a 3 s job, as before) taught every one of them
    the same wrong 2.5 s, and the schedules fitted on that polled a 3 s model 2.4x the page's loop."""
    times = fitted([]).poll_times(200)
    done = next(t for t in times if t >= duration)
    pending = max([0.0] + [t for t in times if t < duration])
    assert done - pending <= 0.25 * done + 1e-9
    assert abs((pending + done) / 2 - duration) <= 0.15 * duration


def test_first_poll_waits_most_of_the_typical_time() -> None:
    schedule = fitted(lognormal(25, 0.25, 20))
    first = schedule.poll_times(100)[0]
    assert 0.5 * 25 < first < 25


def test_dense_around_expected_then_backs_off() -> None:
    schedule = fitted(lognormal(25, 0.25, 20))
    times = schedule.poll_times(300)
    near = [t for t in times if 20 <= t <= 30]
    assert len(near) >= 5
    near_gap = max(gaps(near))
    late_gap = schedule.next_delay(60)
    assert late_gap > 3 * near_gap
    assert schedule.next_delay(1000) == pytest.approx(MAX)  # capped


def test_intervals_never_below_min_and_all_positive() -> None:
    for durations in ([1.0] * 20, [0.2, 0.3], lognormal(3, 0.05, 20), lognormal(100, 1.0, 20)):
        schedule = fitted(durations)
        for elapsed in [0, 0.1, 1, 5, 50, 500, 5000]:
            delay = schedule.next_delay(elapsed)
            assert 0 < delay <= max(MAX, schedule.first_poll) and math.isfinite(delay)
            if elapsed >= schedule.first_poll:
                assert delay >= MIN
        assert schedule.poll_times(100)[0] >= MIN


def test_times_strictly_increase_and_are_deterministic() -> None:
    durations = lognormal(8, 0.3, 20)
    a, b = fitted(durations).poll_times(120), fitted(durations).poll_times(120)
    assert a == b
    assert all(y > x for x, y in itertools.pairwise(a))


def test_jitter_is_seeded() -> None:
    def make(seed: int) -> PollSchedule:
        return PollSchedule.from_history(
            lognormal(8, 0.3, 20),
            default_expected=20,
            min_interval=MIN,
            max_interval=MAX,
            jitter=0.1,
            rng=random.Random(seed),
        )

    assert make(1).poll_times(60) == make(1).poll_times(60)
    assert make(1).poll_times(60) != make(2).poll_times(60)


def test_robust_to_outliers() -> None:
    base = lognormal(8, 0.2, 18)
    clean = fitted(base)
    dirty = fitted([*base, 600.0, 0.01, float("nan"), -3.0])
    assert dirty.expected == pytest.approx(clean.expected, rel=0.15)
    assert dirty.spread is not None and clean.spread is not None
    assert dirty.spread < 1.5 * clean.spread


def test_few_samples_stay_cautious() -> None:
    one = fitted([10.0])
    many = fitted([10.0] * 20)
    assert one.spread is not None and many.spread is not None
    assert one.spread > many.spread  # one sample must not make the schedule razor-thin
    assert one.first_poll < many.first_poll


def test_schedule_scales_with_expected_duration() -> None:
    fast, slow = fitted(lognormal(8, 0.25, 20)), fitted(lognormal(25, 0.25, 20))
    assert fast.first_poll < slow.first_poll
    assert fast.next_delay(fast.expected) < slow.next_delay(slow.expected)


def test_fixed() -> None:
    assert PollSchedule.fixed(5).poll_times(16) == [5, 10, 15]


class MemoryDurations:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []

    async def record_duration(self, model: str, seconds: float, *, now: float) -> None:
        self.rows.append((model, seconds, now))

    async def recent_durations(self, model: str, limit: int) -> list[float]:
        return [s for m, s, _ in reversed(self.rows) if m == model][:limit]


async def test_planner_records_and_fits() -> None:
    store = MemoryDurations()
    planner = PollPlanner(store, history_size=5, default_expected=20, min_interval=MIN, max_interval=MAX)
    assert (await planner.schedule_for("m")).spread is None
    for seconds in [30, 30, 8, 8, 8, 8, 8]:
        await planner.record("m", seconds)
    await planner.record("m", float("nan"))  # ignored
    assert len(store.rows) == 7 and store.rows[0][2] > 1e9  # epoch seconds
    schedule = await planner.schedule_for("m")
    assert schedule.expected == pytest.approx(8)  # only the latest five count
    assert (await planner.schedule_for("other")).spread is None


def test_planner_from_settings() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        discord_token=SecretStr("t"),
        gateway_api_key=SecretStr("k"),
        poll_history_size=7,
        poll_min_interval=0.5,
    )
    planner = PollPlanner.from_settings(MemoryDurations(), settings)
    assert planner.history_size == 7 and planner.min_interval == 0.5


def test_density_and_first_poll_settings_trade_lag_for_polls() -> None:
    history = [8.0 * (1.0 + 0.05 * (i % 5 - 2)) for i in range(20)]
    # Without a poll budget: with one, the budget decides how dense (see the budget tests below).
    common = {"default_expected": 20.0, "min_interval": 0.01, "max_interval": 10.0, "budget": None}
    default = PollSchedule.from_history(history, **common)
    denser = PollSchedule.from_history(history, density=0.1, **common)
    earlier = PollSchedule.from_history(history, first_poll_spreads=3.0, **common)
    assert len(denser.poll_times(12.0)) > len(default.poll_times(12.0))
    assert earlier.poll_times(12.0)[0] < default.poll_times(12.0)[0]


def test_planner_takes_the_knobs_from_settings() -> None:
    settings = Settings(
        _env_file=None, discord_token="t" * 10, gateway_api_key="k" * 10, poll_density=0.1, poll_first_poll_spreads=2.0
    )
    planner = PollPlanner.from_settings(_NoHistory(), settings)
    assert (planner.density, planner.first_poll_spreads) == (0.1, 2.0)


class _NoHistory:
    async def record_duration(self, model: str, seconds: float, *, now: float) -> None:
        raise AssertionError("not used")

    async def recent_durations(self, model: str, limit: int) -> list[float]:
        return []


def reference_polls(duration: float) -> int:
    """The gateway page's example loop: poll at once, then every 5 s, until done."""
    return 2 + int(duration // 5) if duration % 5 else 1 + int(duration // 5)


def average_polls(schedule: PollSchedule, durations: list[float]) -> float:
    times = schedule.poll_times(10 * max(durations))
    return sum(1 + sum(1 for t in times if t < d) for d in durations) / len(durations)


@pytest.mark.parametrize("median", [3.0, 5.0, 8.0, 25.0, 60.0])
def test_budget_keeps_polls_within_the_reference_multiple(median: float) -> None:
    # A long history, so that the fit is close to the jobs' distribution (20 samples may be off by 15 %:
    # bench/bench_polling.py shows what that costs).
    history = lognormal(median, 0.3, 400, seed=2)
    budget = fitted(history, budget=1.8)
    jobs = lognormal(median, 0.3, 2000, seed=3)
    reference = sum(reference_polls(d) for d in jobs) / len(jobs)
    assert average_polls(budget, jobs) <= 2.0 * reference
    assert budget.expected_polls() <= 1.8 * budget.reference_polls() * 1.001


def test_short_jobs_get_fewer_polls_and_long_ones_more_under_a_budget() -> None:
    short, long = lognormal(3.0, 0.3, 20), lognormal(60.0, 0.3, 20)
    assert fitted(short, budget=1.8).expected_polls() < fitted(short, budget=None).expected_polls()
    assert fitted(long, budget=1.8).expected_polls() > fitted(long, budget=None).expected_polls()
    assert fitted(short, budget=1.8).stretch > 1 > fitted(long, budget=1.8).stretch


def test_no_history_has_no_budget_to_fit() -> None:
    assert fitted([], budget=1.8) == fitted([], budget=None)


def test_finish_chance_is_highest_where_jobs_usually_finish() -> None:
    schedule = fitted(lognormal(20.0, 0.25, 20))
    early, central, late = (schedule.finish_chance(t - 1, t) for t in (8.0, 20.0, 60.0))
    assert early < central
    assert 0 <= early <= 1 and 0 <= central <= 1 and 0 <= late <= 1
    assert schedule.finish_chance(10, 10) == 0
    no_history = fitted([])
    assert no_history.finish_chance(5, 10) == pytest.approx(0.5)


async def test_planner_refits_a_full_history_at_most_every_few_seconds() -> None:
    store = MemoryDurations()
    now = [1000.0]
    planner = PollPlanner(
        store, history_size=20, default_expected=20, min_interval=MIN, max_interval=MAX, clock=lambda: now[0]
    )
    for seconds in lognormal(8.0, 0.3, 19):
        await planner.record("m", seconds)
    short = await planner.schedule_for("m")
    await planner.record("m", 8.0)
    first = await planner.schedule_for("m")
    assert first is not short, "a history still filling up is refitted at once"
    assert await planner.schedule_for("m") is first  # same history: the same fitted schedule
    for _ in range(12):
        await planner.record("m", 30.0)  # the model got much slower
    assert await planner.schedule_for("m") is first, "a full history changed: reused for a while"
    now[0] += 6.0
    refitted = await planner.schedule_for("m")
    assert refitted is not first and refitted.expected > 2 * first.expected
