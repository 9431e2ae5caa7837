"""Ledger: periods in time zones (DST included), allowance resolution, balance arithmetic, grants and
deductions, budgets and amount validation, over a real SqliteStore."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from bot.config import Settings
from bot.credits.ledger import MAX_ADJUSTMENT, Balance, BudgetStatus, Ledger, period_bounds
from bot.errors import BudgetExhaustedError, InsufficientCreditsError, InvalidAmountError
from bot.store.records import Allowance, EntryKind, JobStatus, NewJob
from bot.store.sqlite import SqliteStore
from tests.factories import make_job

G, U, ADMIN = 10, 20, 99


def ts(text: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def job(job_id: str, *, count: int = 2, price: int = 5, user_id: int = U) -> NewJob:
    return make_job(id=job_id, guild_id=G, channel_id=1, user_id=user_id, count=count, price=price)


@pytest.fixture
def clock() -> Clock:
    return Clock(ts("2024-03-15T13:00:00"))


@pytest.fixture
def ledger(store: SqliteStore, clock: Clock) -> Ledger:
    return Ledger(store, default_allowance=Allowance(100, "month"), clock=clock)


# --- period_bounds ----------------------------------------------------------------------------------------


def test_day_week_month_in_utc() -> None:
    now = ts("2024-03-14T13:00:00")  # a Thursday
    assert period_bounds("day", now) == (ts("2024-03-14T00:00:00"), ts("2024-03-15T00:00:00"))
    assert period_bounds("week", now) == (ts("2024-03-11T00:00:00"), ts("2024-03-18T00:00:00"))
    assert period_bounds("month", now) == (ts("2024-03-01T00:00:00"), ts("2024-04-01T00:00:00"))
    assert period_bounds("unlimited", now) == (0.0, None)


def test_boundaries_are_inclusive_at_the_start() -> None:
    midnight = ts("2024-03-14T00:00:00")
    assert period_bounds("day", midnight)[0] == midnight
    assert period_bounds("day", midnight - 0.001)[1] == midnight


def test_day_across_dst_changes() -> None:
    ny = "America/New_York"
    start, end = period_bounds("day", ts("2024-03-10T12:00:00", ny), ny)  # spring forward: 23 hours
    assert (start, end) == (ts("2024-03-10T05:00:00"), ts("2024-03-11T04:00:00"))
    assert end - start == 23 * 3600
    start, end = period_bounds("day", ts("2024-11-03T12:00:00", ny), ny)  # fall back: 25 hours
    assert end - start == 25 * 3600
    start, end = period_bounds("week", ts("2024-03-10T12:00:00", ny), ny)
    assert (start, end) == (ts("2024-03-04T00:00:00", ny), ts("2024-03-11T00:00:00", ny))
    assert end - start == 7 * 86400 - 3600


def test_day_whose_midnight_does_not_exist() -> None:
    # Santiago skips 2024-09-08 00:00 (clocks jump to 01:00): the day starts at its first real instant.
    tz = "America/Santiago"
    start, _ = period_bounds("day", ts("2024-09-08T12:00:00", tz), tz)
    assert start == datetime(2024, 9, 8, 4, tzinfo=UTC).timestamp()
    assert period_bounds("day", ts("2024-09-07T12:00:00", tz), tz)[1] == start


def test_non_utc_zone_and_month_rollover_december_to_january() -> None:
    instant = ts("2024-12-31T20:00:00")  # already 2025-01-01 05:00 in Tokyo
    assert period_bounds("month", instant, "Asia/Tokyo") == (
        ts("2025-01-01T00:00:00", "Asia/Tokyo"),
        ts("2025-02-01T00:00:00", "Asia/Tokyo"),
    )
    assert period_bounds("month", instant) == (ts("2024-12-01T00:00:00"), ts("2025-01-01T00:00:00"))
    assert period_bounds("day", instant, "Asia/Tokyo")[0] == ts("2024-12-31T15:00:00")


def test_unknown_zone_counts_as_utc() -> None:
    now = ts("2024-03-14T13:00:00")
    for tz in ("Mars/Olympus_Mons", "", "../etc/passwd"):
        assert period_bounds("week", now, tz) == period_bounds("week", now)


# --- allowance resolution -------------------------------------------------------------------------------


async def test_allowance_resolution_order(store: SqliteStore, ledger: Ledger) -> None:
    assert await ledger.allowance_for(G, U, [1, 2]) == Allowance(100, "month")  # bot default
    await store.update_policy(G, actor_id=ADMIN, now=0, default_allowance=Allowance(50, "week"))
    assert await ledger.allowance_for(G, U, [1, 2]) == Allowance(50, "week")  # server default
    await store.set_role_allowance(G, 1, Allowance(1000, "month"), actor_id=ADMIN, now=0)
    await store.set_role_allowance(G, 2, Allowance(40, "day"), actor_id=ADMIN, now=0)  # ~1217/month
    await store.set_role_allowance(G, 3, Allowance(None, "unlimited"), actor_id=ADMIN, now=0)
    assert await ledger.allowance_for(G, U, [1]) == Allowance(1000, "month")
    assert await ledger.allowance_for(G, U, [1, 2]) == Allowance(40, "day")  # the higher rate
    assert await ledger.allowance_for(G, U, [1, 2, 3]) == Allowance(None, "unlimited")  # unlimited beats all
    assert await ledger.allowance_for(G, U, [4]) == Allowance(50, "week")  # roles without allowance
    await store.set_member_allowance(G, U, Allowance(5, "day"), actor_id=ADMIN, now=0)
    assert await ledger.allowance_for(G, U, [1, 2, 3]) == Allowance(5, "day")  # the override wins


def test_from_settings() -> None:
    settings = Settings(
        _env_file=None,
        discord_token="t",
        gateway_api_key="k",
        default_allowance=42,
        default_allowance_period="week",
    )
    ledger = Ledger.from_settings(SqliteStore(":memory:"), settings)
    assert ledger.default_allowance == Allowance(42, "week")


# --- balances ---------------------------------------------------------------------------------------------


async def test_balance_arithmetic_and_period_reset(ledger: Ledger, clock: Clock) -> None:
    await ledger.grant(G, U, 30, actor_id=ADMIN, reason="event")
    await ledger.deduct(G, U, 10, actor_id=ADMIN, reason="oops")
    await ledger.hold_for_job(job("a"), [])  # holds 10
    await ledger.hold_for_job(job("b", count=1, price=7), [])  # holds 7
    await ledger.settle("a", JobStatus.DELIVERED, delivered_count=1)  # captures 5, releases 5
    balance = await ledger.balance(G, U, [])
    assert balance == Balance(
        allowance=Allowance(100, "month"),
        granted=20,
        captured=5,
        held=7,
        available=100 + 20 - 5 - 7,
        period_start=ts("2024-03-01T00:00:00"),
        resets_at=ts("2024-04-01T00:00:00"),
    )
    clock.now = ts("2024-04-02T00:00:00")  # next month: grants and captures stay behind, holds do not
    balance = await ledger.balance(G, U, [])
    assert (balance.granted, balance.captured, balance.held, balance.available) == (0, 0, 7, 93)
    await ledger.settle("b", JobStatus.DELIVERED, delivered_count=1)
    balance = await ledger.balance(G, U, [])
    assert (balance.captured, balance.held, balance.available) == (7, 0, 93)  # charged when delivered


async def test_hold_refused_past_the_allowance(ledger: Ledger) -> None:
    for i in range(10):
        await ledger.hold_for_job(job(f"j{i}"), [])
    with pytest.raises(InsufficientCreditsError) as refused:
        await ledger.hold_for_job(job("over"), [])
    assert refused.value.params == {"needed": 10, "available": 0}
    await ledger.grant(G, U, 10, actor_id=ADMIN, reason="more")
    await ledger.hold_for_job(job("over"), [])


async def test_deduction_can_make_available_negative(ledger: Ledger) -> None:
    await ledger.deduct(G, U, 130, actor_id=ADMIN, reason="clawback")
    balance = await ledger.balance(G, U, [])
    assert balance.available == -30
    with pytest.raises(InsufficientCreditsError) as refused:
        await ledger.hold_for_job(job("x"), [])
    assert refused.value.params == {"needed": 10, "available": 0}


async def test_unlimited_member_is_never_refused(store: SqliteStore, ledger: Ledger) -> None:
    await store.set_member_allowance(G, U, Allowance(None, "month"), actor_id=ADMIN, now=0)
    await ledger.deduct(G, U, 500, actor_id=ADMIN, reason="x")
    await ledger.hold_for_job(job("big", count=10, price=1000), [])
    balance = await ledger.balance(G, U, [])
    assert balance.available is None and balance.held == 10_000
    assert balance.period_start == ts("2024-03-01T00:00:00")


async def test_periods_follow_the_server_time_zone(store: SqliteStore, ledger: Ledger, clock: Clock) -> None:
    await store.update_policy(G, actor_id=ADMIN, now=0, timezone="Asia/Tokyo", default_allowance=Allowance(10, "day"))
    clock.now = ts("2024-03-15T14:30:00")  # 23:30 in Tokyo
    await ledger.hold_for_job(job("late"), [])
    await ledger.settle("late", JobStatus.DELIVERED, delivered_count=2)
    assert (await ledger.balance(G, U, [])).available == 0
    clock.now = ts("2024-03-15T15:00:00")  # midnight in Tokyo, still the 15th in UTC
    balance = await ledger.balance(G, U, [])
    assert balance.available == 10 and balance.resets_at == ts("2024-03-17T00:00:00", "Asia/Tokyo")


# --- budgets ----------------------------------------------------------------------------------------------


async def test_budget_status_and_refusal(store: SqliteStore, ledger: Ledger) -> None:
    status = await ledger.budget_status(G)
    assert status == BudgetStatus(budget=None, spent=0, remaining=None, resets_at=None)
    await store.update_policy(G, actor_id=ADMIN, now=0, budget=Allowance(25, "week"))
    await ledger.hold_for_job(job("a"), [])
    await ledger.hold_for_job(job("b", user_id=U + 1), [])
    await ledger.settle("a", JobStatus.DELIVERED, delivered_count=1)
    status = await ledger.budget_status(G)
    assert status == BudgetStatus(
        budget=Allowance(25, "week"), spent=15, remaining=10, resets_at=ts("2024-03-18T00:00:00")
    )
    await ledger.hold_for_job(job("c", user_id=U + 2), [])
    with pytest.raises(BudgetExhaustedError) as exhausted:
        await ledger.hold_for_job(job("d", user_id=U + 3, count=1, price=1), [])
    assert exhausted.value.params == {"needed": 1, "remaining": 0}
    status = await ledger.budget_status(G)
    assert (status.spent, status.remaining) == (25, 0)


async def test_unlimited_budget_reports_spend_without_cap(store: SqliteStore, ledger: Ledger) -> None:
    await store.update_policy(G, actor_id=ADMIN, now=0, budget=Allowance(None, "day"))
    await ledger.hold_for_job(job("a"), [])
    status = await ledger.budget_status(G)
    assert (status.spent, status.remaining, status.resets_at) == (10, None, ts("2024-03-16T00:00:00"))


# --- grants and deductions ---------------------------------------------------------------------------------


async def test_grant_and_deduct_entries(store: SqliteStore, ledger: Ledger, clock: Clock) -> None:
    entry = await ledger.grant(G, U, 25, actor_id=ADMIN, reason="contest")
    assert (entry.kind, entry.amount, entry.actor_id, entry.created_at) == (EntryKind.GRANT, 25, ADMIN, clock.now)
    whole = await ledger.deduct(G, U, 5.0, actor_id=ADMIN, reason="float from a form")  # type: ignore[arg-type]
    assert (whole.kind, whole.amount) == (EntryKind.DEDUCT, 5)
    assert [a.action for a in await store.recent_audit(G, 5)] == ["ledger.deduct", "ledger.grant"]


@pytest.mark.parametrize("amount", [0, -1, MAX_ADJUSTMENT + 1, 1.5, True, "5", None])
async def test_amount_validation(ledger: Ledger, amount: object) -> None:
    for operation in (ledger.grant, ledger.deduct):
        with pytest.raises(InvalidAmountError) as invalid:
            await operation(G, U, amount, actor_id=ADMIN, reason="x")  # type: ignore[arg-type]
        assert invalid.value.params == {"value": amount, "limit": MAX_ADJUSTMENT}


async def test_largest_amount_is_accepted(ledger: Ledger) -> None:
    assert (await ledger.grant(G, U, MAX_ADJUSTMENT, actor_id=ADMIN, reason="x")).amount == MAX_ADJUSTMENT
