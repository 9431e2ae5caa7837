"""The operator's caps, enforced by the store in the hold's guarded statement: real SQL, real concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.config import Settings
from bot.credits.ledger import Ledger, period_bounds
from bot.credits.policy import PolicyService
from bot.errors import (
    AboveOperatorCapError,
    BotDailyCapError,
    BotMonthlyCapError,
    GuildNotApprovedError,
    ServerCapReachedError,
)
from bot.generation.catalog import Catalog
from bot.ops.caps import CapsPolicy
from bot.store.base import Store
from bot.store.records import Allowance, HoldLimits, JobStatus
from tests.factories import make_job

G1, G2, OPERATOR = 7, 8, 1
NOW = 1_710_000_000.0 + 3600 * 5 + 123.0  # mid-morning UTC, not on a bucket boundary
YESTERDAY = NOW - 86_400


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, discord_token="t" * 20, gateway_api_key="k" * 20, **values)  # type: ignore[call-arg]


def ledger_for(store: Store, clock: float = NOW, **values: Any) -> Ledger:
    ledger = Ledger(store, default_allowance=Allowance(10_000, "month"), clock=lambda: clock)
    ledger.caps = CapsPolicy(store, settings(**values), clock=lambda: clock)
    return ledger


async def spend(ledger: Ledger, guild_id: int, amount: int, user_id: int = 900) -> None:
    """Hold and capture `amount` credits in a server (one image at that price)."""
    record = await ledger.hold_for_job(make_job(guild_id=guild_id, user_id=user_id, price=amount), [])
    await ledger.settle(record.id, JobStatus.DELIVERED, delivered_count=1)


async def test_fifty_concurrent_requests_across_two_servers_never_pass_the_daily_cap(store: Store) -> None:
    await spend(ledger_for(store, YESTERDAY), G1, 500)  # yesterday's spend does not count today
    ledger = ledger_for(store, operator_daily_cap=100)
    await spend(ledger, G1, 16)  # captured today, inside the first (partial) bucket of the day
    jobs = [make_job(guild_id=(G1, G2)[i % 2], user_id=1000 + i, price=7) for i in range(50)]
    results = await asyncio.gather(*(ledger.hold_for_job(j, []) for j in jobs), return_exceptions=True)

    held = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(held) == (100 - 16) // 7 == 12
    assert len(refused) == 38 and all(isinstance(r, BotDailyCapError) for r in refused)
    assert {r.guild_id for r in held} == {G1, G2}
    day_start, _ = period_bounds("day", NOW)
    assert await store.bot_spend(day_start) == 16 + 12 * 7 <= 100
    refused_ids = {j.id for j, r in zip(jobs, results, strict=True) if isinstance(r, BaseException)}
    assert [await store.get_job(job_id) for job_id in refused_ids] == [None] * 38, "a refusal writes nothing"


async def test_two_processes_at_the_daily_cap_never_pass_it_together(shared_stores: tuple[Store, Store]) -> None:
    # Two stores on one database (PostgreSQL: two connection pools), 50 holds split between them across
    # two servers: the bot-wide cap sums every server, so only a bot-wide lock keeps it exact.
    first, second = shared_stores
    await spend(ledger_for(first), G1, 16)
    ledgers = (ledger_for(first, operator_daily_cap=100), ledger_for(second, operator_daily_cap=100))
    jobs = [make_job(guild_id=(G1, G2)[i % 2], user_id=1000 + i, price=7) for i in range(50)]
    results = await asyncio.gather(
        *(ledgers[(i // 2) % 2].hold_for_job(j, []) for i, j in enumerate(jobs)), return_exceptions=True
    )
    held = [r for r in results if not isinstance(r, BaseException)]
    assert len(held) == 12 and all(isinstance(r, BotDailyCapError) for r in results if r not in held)
    day_start, _ = period_bounds("day", NOW)
    assert await first.bot_spend(day_start) == await second.bot_spend(day_start) == 16 + 12 * 7


async def test_the_monthly_cap_counts_every_day_of_the_month(store: Store) -> None:
    await spend(ledger_for(store, YESTERDAY), G2, 40)
    ledger = ledger_for(store, operator_monthly_cap=50)
    with pytest.raises(BotMonthlyCapError):
        await ledger.hold_for_job(make_job(guild_id=G1, price=11), [])
    assert (await ledger.hold_for_job(make_job(guild_id=G1, price=10), [])).hold_amount == 10


async def test_a_server_cap_refuses_that_server_only_and_says_what_is_left(store: Store) -> None:
    ledger = ledger_for(store, operator_guild_cap=100, operator_guild_cap_period="day")
    await store.set_guild_ops(G1, actor_id=OPERATOR, now=NOW, cap=Allowance(20, "day"))
    await spend(ledger, G1, 15)
    with pytest.raises(ServerCapReachedError) as refused:
        await ledger.hold_for_job(make_job(guild_id=G1, price=6), [])
    assert refused.value.params == {"needed": 6, "remaining": 5}
    await ledger.hold_for_job(make_job(guild_id=G2, price=60), [])  # G2 has the settings' default: 100 a day


async def test_the_widest_cap_is_the_one_the_member_hears_about(store: Store) -> None:
    ledger = ledger_for(store, operator_daily_cap=5)
    ledger._default_allowance = Allowance(3, "month")  # the member is short too
    with pytest.raises(BotDailyCapError):
        await ledger.hold_for_job(make_job(guild_id=G1, price=6), [])


async def test_an_allowlisted_bot_refuses_an_unapproved_server_and_writes_nothing(store: Store) -> None:
    ledger = ledger_for(store, guild_access="allowlist")
    job = make_job(guild_id=G1, price=0)  # even a free job
    with pytest.raises(GuildNotApprovedError):
        await ledger.hold_for_job(job, [])
    assert await store.get_job(job.id) is None
    assert await store.ledger_entries(G1, 0, 1e12) == []
    await store.set_guild_ops(G1, actor_id=OPERATOR, now=NOW, approved=True)
    assert (await ledger.hold_for_job(make_job(guild_id=G1, price=5), [])).guild_id == G1


async def test_the_store_itself_guards_approval_so_a_removal_cannot_race_a_hold(store: Store) -> None:
    limits = HoldLimits(allowance=None, period_start=0.0, require_approval=True)
    job = make_job(guild_id=G2, price=5)
    with pytest.raises(GuildNotApprovedError):
        await store.create_job_with_hold(job, limits, now=NOW)
    assert await store.get_job(job.id) is None


async def test_an_admin_cannot_set_a_budget_or_allowance_above_the_operator_cap(store: Store) -> None:
    ledger = ledger_for(store, operator_guild_cap=1000, operator_guild_cap_period="month")
    policy = PolicyService(store, ledger, Catalog.load(None), bot_default_model="gemini-2.5-flash-image")
    policy.caps = ledger.caps
    with pytest.raises(AboveOperatorCapError):
        await policy.set_budget(G1, 50, 2000, "month")
    with pytest.raises(AboveOperatorCapError):
        await policy.set_budget(G1, 50, 100, "day")  # 100 a day is about 3,000 a month
    with pytest.raises(AboveOperatorCapError):
        await policy.set_default_allowance(G1, 50, 5000, "week")
    assert await store.recent_audit(G1, 10) == [], "nothing was written"
    assert (await store.get_policy(G1)).budget is None
    assert (await policy.set_budget(G1, 50, 900, "month")).budget == Allowance(900, "month")
