"""When to poll an asynchronous generation: an adaptive schedule learned from recent durations.

The gateway's own example polls every 5 seconds, which finds a finished image 2.5 s late on average and
wastes polls on slow models. A model's generation time is fairly stable, so the schedule waits through most
of the usual time without polling, polls densely where completions usually land, and backs off once the job
is later than usual. The spacing follows the duration distribution: the interval at time t grows like
exp(SHAPE·z²) with z = ln(t/median)/spread, i.e. inversely to a power of the log-normal density, which
spends polls where they are most likely to catch the completion (see bench/bench_polling.py).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bot.config import Settings

# Tuned with bench/bench_polling.py against log-normal durations (spread 0.3) from 3 s to 60 s.
# The trade-offs between detection lag and polls are settings (POLL_FIRST_POLL_SPREADS, POLL_DENSITY,
# POLL_BUDGET); these are their defaults. With a budget (the default) the density only sets the shape's
# starting point: the intervals are then scaled to spend the budget.
FIRST_POLL_Z = 1.5  # first poll 1.5 spreads before the median: ~7 % of jobs are done by then
DENSITY_FACTOR = 0.2  # interval at the median, as a fraction of median × spread (≈ the std-dev in s)
SHAPE = 0.2  # how fast the interval widens away from the median
NO_HISTORY_FIRST_FRACTION = 0.05  # with no history, first poll at a twentieth of the default expectation
NO_HISTORY_GROWTH = 0.25  # ... then each interval is a quarter of the time elapsed (lag ≤ 25 %)
POLL_BUDGET = 1.8  # expected polls per job at most this many times the gateway page's example loop's
REFERENCE_INTERVAL = 5.0  # the page's example: poll at once, then every 5 s
_BUDGET_STEPS = 14  # bisection steps fitting the stretch (precision ~0.1 %)
_MAX_STRETCH = 64.0
_TAIL_SURVIVAL = 1e-4  # expected polls are summed until this share of jobs is still running
_MAX_COUNTED_POLLS = 400
REFIT_AFTER = 5.0  # seconds a model's fitted schedule is reused while its full history changes
PRIOR_SPREAD = 0.5  # log-scale spread assumed before there is history (a factor ~1.6 either way)
PRIOR_WEIGHT = 2.0  # the prior counts as this many observations when estimating the spread
MIN_SPREAD = 0.05  # timer noise: never assume durations tighter than ±5 %
MAX_SPREAD = 1.5


class DurationHistory(Protocol):
    """The part of `bot.store.base.Store` the planner needs."""

    async def record_duration(self, model: str, seconds: float, *, now: float) -> None: ...

    async def recent_durations(self, model: str, limit: int) -> list[float]: ...


@dataclass(frozen=True)
class PollSchedule:
    """Delays between polls of one operation, as a pure function of the time since submit.

    Build one with `from_history` (or `fixed` for a constant interval). `expected` is the median duration
    in seconds; `spread` the standard deviation of log(duration), or None when there is no history (then
    the delays grow geometrically from `first_poll`). `jitter` (a fraction) is drawn from `rng`, so a
    schedule is deterministic given its inputs.
    """

    expected: float
    spread: float | None
    first_poll: float
    min_interval: float
    max_interval: float
    fixed_interval: float | None = None
    density: float = DENSITY_FACTOR
    jitter: float = 0.0
    rng: random.Random | None = field(default=None, compare=False, repr=False)
    # Widens every interval around the median (before the caps) so that a job costs at most its poll budget.
    stretch: float = 1.0
    reference_interval: float = REFERENCE_INTERVAL  # the loop a budget is measured against (benches scale it)

    @classmethod
    def from_history(
        cls,
        durations: list[float],
        *,
        default_expected: float,
        min_interval: float,
        max_interval: float,
        first_poll_spreads: float = FIRST_POLL_Z,
        density: float = DENSITY_FACTOR,
        budget: float | None = POLL_BUDGET,
        reference_interval: float = REFERENCE_INTERVAL,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> PollSchedule:
        """A schedule fitted to recent durations (seconds) of one model, robust to outliers.

        The median and the spread are taken on the log scale (median and MAD), so one job stuck in a
        queue for minutes moves neither much. With no history, the first poll comes at a twentieth of
        `default_expected` and the intervals grow by a quarter of the time elapsed: every job, a short one
        too, is then found within 25 % of its time, so the durations a model's first jobs teach are fair
        (a first poll at a quarter, 5 s, taught a 3 s model that all its jobs took 2.5 s).

        `budget` caps the expected polls per job at that multiple of what the gateway page's example
        (poll at once, then every 5 s) makes on the same durations: short jobs would otherwise be polled
        every `min_interval` through their whole spread. None: no cap.
        """
        max_interval = max(max_interval, min_interval)
        logs = [math.log(d) for d in durations if math.isfinite(d) and d > 0]
        if not logs:
            first = max(min_interval, default_expected * NO_HISTORY_FIRST_FRACTION)
            return cls(default_expected, None, first, min_interval, max_interval, jitter=jitter, rng=rng)
        center = statistics.median(logs)
        mad = statistics.median(abs(x - center) for x in logs) * 1.4826  # MAD -> std-dev for a normal
        n = len(logs)
        # Shrink towards a wide prior: three identical durations must not make the schedule razor-thin.
        spread = math.sqrt((n * mad**2 + PRIOR_WEIGHT * PRIOR_SPREAD**2) / (n + PRIOR_WEIGHT))
        spread = min(MAX_SPREAD, max(MIN_SPREAD, spread))
        expected = math.exp(center)
        first = max(min_interval, expected * math.exp(-first_poll_spreads * spread))
        schedule = cls(
            expected,
            spread,
            first,
            min_interval,
            max_interval,
            density=density,
            jitter=jitter,
            rng=rng,
            reference_interval=reference_interval,
        )
        return schedule if budget is None else schedule.within_budget(budget)

    def survival(self, elapsed: float) -> float:
        """The share of jobs still running `elapsed` seconds after submit, under the fitted log-normal."""
        if self.spread is None or elapsed <= 0:
            return 1.0
        z = math.log(elapsed / self.expected) / self.spread
        return 0.5 * math.erfc(z / math.sqrt(2.0))

    def finish_chance(self, since: float, now: float) -> float:
        """The chance that a job still running `since` seconds after submit has finished by `now`.

        What a poll at `now` is worth; a rate-capped client polls the likeliest first. Without history,
        the share of the elapsed time not yet covered by a poll.
        """
        if now <= since:
            return 0.0
        if self.spread is None:
            return 1.0 - max(0.0, since) / now
        before = self.survival(since)
        if before <= 0.0:
            return 1.0
        return max(0.0, (before - self.survival(now)) / before)

    def expected_polls(self) -> float:
        """Polls per job this schedule makes on average on its fitted durations (the finding one included).

        A poll at t_i happens when the job was still running at the previous poll, so the count is
        1 + Σ P(D > t_i) over the poll times (jitter aside).
        """
        total, elapsed = 1.0, 0.0
        for _ in range(_MAX_COUNTED_POLLS):
            elapsed += self._interval(elapsed)
            still = self.survival(elapsed)
            total += still
            if still < _TAIL_SURVIVAL:
                break
        return total

    def reference_polls(self) -> float:
        """Polls per job of the gateway page's example loop on the fitted durations: 2 + Σ_k≥1 P(D > 5k)."""
        total, k = 2.0, 1
        while k <= _MAX_COUNTED_POLLS:
            still = self.survival(k * self.reference_interval)
            total += still
            if still < _TAIL_SURVIVAL:
                break
            k += 1
        return total

    def within_budget(self, budget: float) -> PollSchedule:
        """This schedule with its intervals scaled so that `expected_polls` is (just under) budget × reference."""
        if self.spread is None or self.fixed_interval is not None:
            return self
        allowed = budget * self.reference_polls()
        # Both ways: a short job gets wider intervals than the density asks, a long one denser polling
        # with the polls its budget leaves (a 60 s job may make 2 x 13 polls).
        low, high = 1.0 / _MAX_STRETCH, _MAX_STRETCH
        for _ in range(_BUDGET_STEPS):
            middle = math.sqrt(low * high)
            if replace(self, stretch=middle).expected_polls() <= allowed:
                high = middle
            else:
                low = middle
        return replace(self, stretch=high)

    @classmethod
    def fixed(cls, interval: float) -> PollSchedule:
        """Poll every `interval` seconds, the first poll after one interval (the gateway page's example)."""
        return cls(interval, None, interval, interval, interval, fixed_interval=interval)

    def next_delay(self, elapsed: float) -> float:
        """Seconds to wait before the next poll, `elapsed` seconds after the operation was submitted."""
        elapsed = max(0.0, elapsed)
        if self.fixed_interval is not None:
            return self.fixed_interval
        interval = self._interval(elapsed)
        if self.jitter and self.rng is not None:
            interval *= 1.0 + self.jitter * (2.0 * self.rng.random() - 1.0)
            interval = max(self.min_interval, interval)
        return interval

    def _interval(self, elapsed: float) -> float:
        """The delay before the next poll, without jitter."""
        if self.fixed_interval is not None:
            return self.fixed_interval
        if elapsed < self.first_poll:
            return self.first_poll - elapsed
        if self.spread is None:
            interval = NO_HISTORY_GROWTH * elapsed
        else:
            z = math.log(elapsed / self.expected) / self.spread
            # Bound the exponent: far in the tail the cap applies anyway, and exp() must not overflow.
            interval = self.density * self.expected * self.spread * math.exp(min(50.0, SHAPE * z * z)) * self.stretch
        return min(self.max_interval, max(self.min_interval, interval))

    def poll_times(self, until: float) -> list[float]:
        """Times (since submit) of the polls this schedule makes up to `until`: for tests and benches."""
        times: list[float] = []
        elapsed = 0.0
        while True:
            elapsed += self.next_delay(elapsed)
            if elapsed > until:
                return times
            times.append(elapsed)


class PollPlanner:
    """Builds each model's schedule from its recent durations in the store, and records new ones."""

    def __init__(
        self,
        store: DurationHistory,
        *,
        history_size: int = 20,
        default_expected: float = 20.0,
        min_interval: float = 0.25,
        max_interval: float = 10.0,
        first_poll_spreads: float = FIRST_POLL_Z,
        density: float = DENSITY_FACTOR,
        budget: float | None = POLL_BUDGET,
        reference_interval: float = REFERENCE_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.first_poll_spreads = first_poll_spreads
        self.density = density
        self.budget = budget
        self.reference_interval = reference_interval
        # model -> (the durations it was fitted on, when, the schedule): fitting to a budget costs about
        # 1.5 ms, and in a burst every finished job changes the history of the jobs still starting.
        self._fitted: dict[str, tuple[tuple[float, ...], float, PollSchedule]] = {}
        self.history_size = history_size
        self.default_expected = default_expected
        self.min_interval = min_interval
        self.max_interval = max_interval
        self._clock = clock

    @classmethod
    def from_settings(cls, store: DurationHistory, settings: Settings) -> PollPlanner:
        """A planner configured by the poll_* settings."""
        return cls(
            store,
            history_size=settings.poll_history_size,
            default_expected=settings.poll_default_expected_seconds,
            min_interval=settings.poll_min_interval,
            max_interval=settings.poll_max_interval,
            first_poll_spreads=settings.poll_first_poll_spreads,
            density=settings.poll_density,
            budget=settings.poll_budget or None,
        )

    async def schedule_for(self, model: str) -> PollSchedule:
        """The schedule for a new operation of `model`, from its latest recorded durations."""
        durations = tuple(await self._store.recent_durations(model, self.history_size))
        cached = self._fitted.get(model)
        now = self._clock()
        # One new duration out of 20 barely moves the fit: refit at most every REFIT_AFTER seconds, but at
        # once while the history is still short (the first jobs of a model teach the most).
        if cached is not None and (
            cached[0] == durations or (len(cached[0]) >= self.history_size and now - cached[1] < REFIT_AFTER)
        ):
            return cached[2]
        schedule = PollSchedule.from_history(
            list(durations),
            default_expected=self.default_expected,
            min_interval=self.min_interval,
            max_interval=self.max_interval,
            first_poll_spreads=self.first_poll_spreads,
            density=self.density,
            budget=self.budget,
            reference_interval=self.reference_interval,
        )
        self._fitted[model] = (durations, now, schedule)
        return schedule

    async def expected_seconds(self, model: str) -> float | None:
        """The median of `model`'s recent durations (what the schedule centres on); None with no history."""
        schedule = await self.schedule_for(model)
        return schedule.expected if schedule.spread is not None else None

    async def record(self, model: str, seconds: float) -> None:
        """Remember that an operation of `model` took `seconds` from submit to completion."""
        if math.isfinite(seconds) and seconds > 0:
            await self._store.record_duration(model, seconds, now=self._clock())
