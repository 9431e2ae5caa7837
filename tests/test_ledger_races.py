"""Races at the edges: many concurrent holds against one member's allowance and against a server budget,
holds racing with settlements, and many settlements of one job. Real SQL, real concurrency; no timing."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from bot.credits.ledger import Ledger
from bot.errors import BudgetExhaustedError, InsufficientCreditsError
from bot.store.records import Allowance, EntryKind, JobStatus, NewJob
from bot.store.sqlite import SqliteStore
from tests.factories import make_job

G, ADMIN = 7, 1
MEMBER = 500
NOW = 1_710_000_000.0


def job(job_id: str, user_id: int = MEMBER, *, price: int = 7, count: int = 1) -> NewJob:
    return make_job(id=job_id, guild_id=G, user_id=user_id, count=count, price=price, mode="async")


@pytest.fixture
def ledger(store: SqliteStore) -> Ledger:
    return Ledger(store, default_allowance=Allowance(100, "month"), clock=lambda: NOW)


async def watch_available(ledger: Ledger, user_id: int, done: asyncio.Event) -> list[int]:
    """Balance readings taken while the race runs (each read yields to the racers)."""
    seen: list[int] = []
    while not done.is_set():
        balance = await ledger.balance(G, user_id, [])
        assert balance.available is not None
        seen.append(balance.available)
    return seen


async def race(*coroutines) -> list:  # type: ignore[no-untyped-def]
    return await asyncio.gather(*coroutines, return_exceptions=True)


async def test_fifty_holds_by_one_member_at_the_allowance_edge(ledger: Ledger) -> None:
    done = asyncio.Event()
    watcher = asyncio.ensure_future(watch_available(ledger, MEMBER, done))
    results = await race(*(ledger.hold_for_job(job(f"j{i}"), []) for i in range(50)))
    done.set()
    seen = await watcher

    held = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(held) == 100 // 7 == 14
    assert all(isinstance(r, InsufficientCreditsError) for r in refused) and len(refused) == 36
    assert all(r.params == {"needed": 7, "available": 2} for r in refused)
    assert seen and min(seen) >= 0
    balance = await ledger.balance(G, MEMBER, [])
    assert (balance.held, balance.available) == (98, 2)


async def test_fifty_members_at_the_server_budget_edge(store: SqliteStore, ledger: Ledger) -> None:
    await store.update_policy(G, actor_id=ADMIN, now=NOW, budget=Allowance(100, "month"))
    results = await race(*(ledger.hold_for_job(job(f"m{i}", user_id=1000 + i), []) for i in range(50)))

    held = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(held) == 14 and len(refused) == 36
    assert all(isinstance(r, BudgetExhaustedError) for r in refused)
    assert all(r.params == {"needed": 7, "remaining": 2} for r in refused)
    status = await ledger.budget_status(G)
    assert (status.spent, status.remaining) == (98, 2)


async def test_budget_and_allowance_edges_together(store: SqliteStore, ledger: Ledger) -> None:
    # Five members with 20 credits each, a budget of 60: both limits bite in the same race.
    await store.update_policy(G, actor_id=ADMIN, now=NOW, budget=Allowance(60, "month"))
    for member in range(5):
        await store.set_member_allowance(G, 1000 + member, Allowance(20, "month"), actor_id=ADMIN, now=NOW)
    results = await race(*(ledger.hold_for_job(job(f"x{i}", user_id=1000 + i % 5, price=5), []) for i in range(40)))
    held = [r for r in results if not isinstance(r, BaseException)]
    assert len(held) == 12  # the budget (60 / 5) binds before the allowances (5 × 4)
    per_member = Counter(r.user_id for r in held)
    assert max(per_member.values()) <= 4
    assert all(isinstance(r, InsufficientCreditsError | BudgetExhaustedError) for r in results if r not in held)
    assert await store.server_spend(G, 0.0) == 60


async def test_holds_racing_with_releases_never_overspend(store: SqliteStore, ledger: Ledger) -> None:
    await store.set_member_allowance(G, MEMBER, Allowance(50, "month"), actor_id=ADMIN, now=NOW)
    first = [await ledger.hold_for_job(job(f"old{i}", price=5), []) for i in range(10)]  # all 50 held
    results = await race(
        *(ledger.settle(j.id, JobStatus.FAILED, error_key="error.upstream") for j in first),
        *(ledger.hold_for_job(job(f"new{i}", price=5), []) for i in range(20)),
    )
    assert all(r is not None and not isinstance(r, BaseException) for r in results[:10])
    new_held = [r for r in results[10:] if not isinstance(r, BaseException)]
    assert all(isinstance(r, InsufficientCreditsError) for r in results[10:] if r not in new_held)
    assert 0 < len(new_held) <= 10  # settlements are submitted first (holds read policy before submitting)
    balance = await ledger.balance(G, MEMBER, [])
    assert balance.held == 5 * len(new_held) and balance.available == 50 - balance.held >= 0


async def test_concurrent_settlements_of_one_job_capture_once(store: SqliteStore, ledger: Ledger) -> None:
    await ledger.hold_for_job(job("j", price=10, count=3), [])
    outcomes = [JobStatus.DELIVERED, JobStatus.FAILED, JobStatus.CANCELLED] * 10
    results = await race(*(ledger.settle("j", status, delivered_count=2) for status in outcomes))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and not isinstance(winners[0], BaseException)
    winner = winners[0]
    entries = [e for e in await store.ledger_entries(G, 0.0, NOW + 1) if e.job_id == "j"]
    kinds = Counter(e.kind for e in entries)
    assert all(n == 1 for n in kinds.values())
    captured = sum(e.amount for e in entries if e.kind is EntryKind.CAPTURE)
    released = sum(e.amount for e in entries if e.kind is EntryKind.RELEASE)
    assert captured == winner.charged == (20 if winner.status is JobStatus.DELIVERED else 0)
    assert captured + released == 30
    assert (await ledger.balance(G, MEMBER, [])).held == 0


async def test_many_jobs_settled_twice_concurrently(store: SqliteStore, ledger: Ledger) -> None:
    jobs = await race(*(ledger.hold_for_job(job(f"k{i}", user_id=2000 + i, price=3, count=2), []) for i in range(30)))
    ids = [j.id for j in jobs]
    results = await race(
        *(ledger.settle(job_id, JobStatus.DELIVERED, delivered_count=1) for job_id in ids),
        *(ledger.settle(job_id, JobStatus.CANCELLED) for job_id in ids),
    )
    for i in range(30):
        assert (results[i] is None) != (results[30 + i] is None)  # exactly one of the two settled it
    assert len(await store.active_jobs()) == 0
    captured = sum(e.amount for e in await store.ledger_entries(G, 0.0, NOW + 1) if e.kind is EntryKind.CAPTURE)
    assert captured == 3 * sum(r is not None for r in results[:30])
