"""Two stores on one database, as two bot processes (SQLite: two connections to a file; PostgreSQL: two
connection pools): holds at the edges never overspend, job leases are claimed once, an expired lease is
taken over, a live owner is never robbed, a cancel set by one is read by the other, heartbeats."""

from __future__ import annotations

import asyncio
from collections import Counter

from bot.credits.ledger import Ledger
from bot.errors import (
    BudgetExhaustedError,
    DefaultModelDisabledError,
    InsufficientCreditsError,
    ModelDisabledError,
)
from bot.store.base import Store
from bot.store.records import Allowance, EntryKind, JobStatus, NewJob, RunLimits
from tests.factories import make_job

G, ADMIN, MEMBER = 7, 1, 500
NOW = 1_710_000_000.0
WIDE = RunLimits(per_member=100, per_guild=100, global_limit=100)


def job(job_id: str, user_id: int = MEMBER, *, price: int = 7, guild_id: int = G) -> NewJob:
    # With its reply message: an acknowledged job, the only kind a claim takes.
    return make_job(
        id=job_id, guild_id=guild_id, user_id=user_id, count=1, price=price, mode="async", reply_message_id=1
    )


def ledgers(stores: tuple[Store, Store]) -> tuple[Ledger, Ledger]:
    first, second = (Ledger(s, default_allowance=Allowance(100, "month"), clock=lambda: NOW) for s in stores)
    return first, second


async def ledger_sum(store: Store, user_id: int | None = None) -> tuple[int, int]:
    """(held still open, captured) computed from the ledger lines alone."""
    lines = await store.ledger_entries(G, 0.0, NOW + 1, user_id=user_id)
    total = Counter()
    for line in lines:
        total[line.kind] += line.amount
    return total[EntryKind.HOLD] - total[EntryKind.CAPTURE] - total[EntryKind.RELEASE], total[EntryKind.CAPTURE]


async def test_fifty_holds_at_one_members_edge_across_two_stores(shared_stores: tuple[Store, Store]) -> None:
    both = ledgers(shared_stores)
    results = await asyncio.gather(
        *(both[i % 2].hold_for_job(job(f"j{i}"), []) for i in range(50)), return_exceptions=True
    )
    held = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(held) == 100 // 7 == 14
    assert len(refused) == 36 and all(isinstance(r, InsufficientCreditsError) for r in refused)
    for ledger in both:
        balance = await ledger.balance(G, MEMBER, [])
        assert (balance.held, balance.available) == (98, 2)
    assert await ledger_sum(shared_stores[1], MEMBER) == (98, 0)


async def test_fifty_members_at_the_budget_edge_across_two_stores(shared_stores: tuple[Store, Store]) -> None:
    first, _ = shared_stores
    await first.update_policy(G, actor_id=ADMIN, now=NOW, budget=Allowance(100, "month"))
    both = ledgers(shared_stores)
    results = await asyncio.gather(
        *(both[i % 2].hold_for_job(job(f"m{i}", user_id=1000 + i), []) for i in range(50)), return_exceptions=True
    )
    held = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(held) == 14 and len(refused) == 36
    assert all(isinstance(r, BudgetExhaustedError) for r in refused)
    # settle half from each side, then the books: captured + still held == spend, from the lines alone
    settled = await asyncio.gather(
        *(both[n % 2].settle(j.id, JobStatus.DELIVERED, delivered_count=1) for n, j in enumerate(held[:7]))
    )
    assert all(s is not None for s in settled)
    open_held, captured = await ledger_sum(first)
    assert (open_held, captured) == (7 * 7, 7 * 7)
    assert await shared_stores[1].server_spend(G, 0.0) == open_held + captured == 98


async def test_claims_from_two_stores_take_each_job_once_within_limits(shared_stores: tuple[Store, Store]) -> None:
    first, second = shared_stores
    for member in range(4):
        for n in range(5):
            await first.create_job_with_hold(job(f"q{member}-{n}", user_id=2000 + member), _unlimited(), now=NOW + n)
    limits = RunLimits(per_member=2, per_guild=6, global_limit=7)
    claims = await asyncio.gather(
        *(s.claim_jobs(f"p{i % 2}", limits, lease_seconds=30, now=NOW + 10, most=3) for i, s in enumerate(
            [first, second] * 4
        ))
    )
    claimed = [j for batch in claims for j in batch]
    assert len({j.id for j in claimed}) == len(claimed)  # no job claimed twice
    assert len(claimed) == 6  # the server's limit binds before the global one
    assert max(Counter(j.user_id for j in claimed).values()) <= 2
    owners = {j.id: j.owner for j in await second.active_jobs() if j.owner}
    assert owners == {j.id: j.owner for j in claimed}


async def test_claims_count_what_other_processes_already_run(shared_stores: tuple[Store, Store]) -> None:
    first, second = shared_stores
    for guild in (G, G + 1):
        for member in range(3):
            for n in range(2):
                new = job(f"g{guild}-{member}-{n}", user_id=3000 + member, guild_id=guild)
                await first.create_job_with_hold(new, _unlimited(), now=NOW + n)
    limits = RunLimits(per_member=1, per_guild=2, global_limit=3)
    by_first = await first.claim_jobs("a", limits, lease_seconds=30, now=NOW, most=2)
    assert len(by_first) == 2
    by_second = await second.claim_jobs("b", limits, lease_seconds=30, now=NOW, most=10)
    assert len(by_second) == 1  # the global limit counts the first process's two
    running = by_first + by_second
    assert max(Counter(j.guild_id for j in running).values()) <= 2
    assert len({(j.guild_id, j.user_id) for j in running}) == 3  # one per member
    # a finished job frees its slot for the next claim, by anyone
    await first.finish_job(by_second[0].id, JobStatus.CANCELLED, now=NOW)
    assert len(await first.claim_jobs("a", limits, lease_seconds=30, now=NOW, most=10)) == 1
    assert await second.claim_jobs("b", limits, lease_seconds=30, now=NOW, most=10) == []


async def test_claim_is_round_robin_between_members(store: Store) -> None:
    for n in range(3):
        await store.create_job_with_hold(job(f"a{n}", user_id=1), _unlimited(), now=NOW + n)
    await store.create_job_with_hold(job("b0", user_id=2), _unlimited(), now=NOW + 5)
    await store.create_job_with_hold(job("c0", user_id=3), _unlimited(), now=NOW + 6)
    claimed = await store.claim_jobs("p", WIDE, lease_seconds=30, now=NOW + 10, most=3)
    assert sorted(j.id for j in claimed) == ["a0", "b0", "c0"]  # everyone's first before anyone's second
    assert all(j.owner == "p" and j.lease_expires_at == NOW + 40 for j in claimed)


async def test_claim_skips_unacknowledged_jobs_and_serves_the_member_served_longest_ago(store: Store) -> None:
    unacknowledged = make_job(id="u0", user_id=9, count=1, price=7, mode="async")  # no reply message yet
    await store.create_job_with_hold(unacknowledged, _unlimited(), now=NOW - 1)
    await store.create_job_with_hold(job("a0", user_id=1), _unlimited(), now=NOW)
    one = RunLimits(per_member=1, per_guild=1, global_limit=1)
    [first] = await store.claim_jobs("p", one, lease_seconds=30, now=NOW + 1)
    assert first.id == "a0" and first.started_at == NOW + 1
    await store.finish_job("a0", JobStatus.CANCELLED, now=NOW + 2)
    # a1 was asked before b0, but a was just served: b goes first in this round
    await store.create_job_with_hold(job("a1", user_id=1), _unlimited(), now=NOW + 3)
    await store.create_job_with_hold(job("b0", user_id=2), _unlimited(), now=NOW + 4)
    [second] = await store.claim_jobs("p", one, lease_seconds=30, now=NOW + 5)
    assert second.id == "b0"
    await store.finish_job("b0", JobStatus.CANCELLED, now=NOW + 6)
    [third] = await store.claim_jobs("p", one, lease_seconds=30, now=NOW + 7)
    assert third.id == "a1"
    await store.finish_job("a1", JobStatus.CANCELLED, now=NOW + 8)
    assert await store.claim_jobs("p", one, lease_seconds=30, now=NOW + 9) == [], "never the unacknowledged"


async def test_started_jobs_nobody_owns_are_taken_over_queued_ones_are_not(store: Store) -> None:
    await store.create_job_with_hold(job("q"), _unlimited(), now=NOW)
    await store.create_job_with_hold(job("s"), _unlimited(), now=NOW)
    await store.update_job("s", status=JobStatus.POLLING, operation_id="op")  # a run before leases left it
    taken = await store.take_over_jobs("me", lease_seconds=10, alive_seconds=15, now=NOW)
    assert [(j.id, j.owner) for j in taken] == [("s", "me")]


async def test_cancels_requested_lists_the_owners_flagged_jobs(shared_stores: tuple[Store, Store]) -> None:
    first, second = shared_stores
    for name in ("x", "y"):
        await first.create_job_with_hold(job(name), _unlimited(), now=NOW)
    await first.claim_jobs("a", WIDE, lease_seconds=30, now=NOW)
    assert await first.cancels_requested("a") == set()
    assert await second.request_cancel("y") is True
    assert await first.cancels_requested("a") == {"y"}
    assert await first.cancels_requested("b") == set()


async def test_expired_lease_is_taken_over_once_live_owner_never(shared_stores: tuple[Store, Store]) -> None:
    first, second = shared_stores
    for n in range(2):
        await first.create_job_with_hold(job(f"l{n}"), _unlimited(), now=NOW)
    await first.heartbeat("dead", [0], "1", now=NOW)
    await first.heartbeat("alive", [1], "1", now=NOW)
    [dead_job] = await first.claim_jobs("dead", WIDE, lease_seconds=10, now=NOW, most=1)
    [live_job] = await first.claim_jobs("alive", WIDE, lease_seconds=10, now=NOW, most=1)

    # before expiry: nothing to take, whoever asks
    assert await second.take_over_jobs("b", lease_seconds=10, alive_seconds=15, now=NOW + 5) == []
    # "alive" keeps its heartbeat but its lease lapsed (a slow renewal): still not taken
    await second.heartbeat("alive", [1], "1", now=NOW + 20)
    taken = await asyncio.gather(
        first.take_over_jobs("a", lease_seconds=10, alive_seconds=15, now=NOW + 30),
        second.take_over_jobs("b", lease_seconds=10, alive_seconds=15, now=NOW + 30),
    )
    ids = [j.id for batch in taken for j in batch]
    assert ids == [dead_job.id]  # once, by one of the two
    assert (await first.get_job(live_job.id)).owner == "alive"  # type: ignore[union-attr]
    winner = next(j.owner for batch in taken for j in batch)
    assert await first.renew_leases("dead", lease_seconds=10, now=NOW + 31) == set()  # the dead lost it
    assert await second.renew_leases(winner or "", lease_seconds=10, now=NOW + 31) == {dead_job.id}


async def test_a_released_job_is_claimed_by_another_process(shared_stores: tuple[Store, Store]) -> None:
    first, second = shared_stores
    await first.create_job_with_hold(job("r"), _unlimited(), now=NOW)
    [claimed] = await first.claim_jobs("a", WIDE, lease_seconds=30, now=NOW)
    assert await second.release_job("r", "b") is False  # only the owner gives a job back
    assert await second.claim_jobs("b", WIDE, lease_seconds=30, now=NOW) == []
    assert await first.release_job(claimed.id, "a") is True
    [again] = await second.claim_jobs("b", WIDE, lease_seconds=30, now=NOW + 1)
    assert (again.id, again.owner, again.lease_expires_at) == ("r", "b", NOW + 31)


async def test_cancel_set_by_one_store_is_read_by_the_other(shared_stores: tuple[Store, Store]) -> None:
    first, second = shared_stores
    await first.create_job_with_hold(job("c"), _unlimited(), now=NOW)
    assert await first.cancel_requested("c") is False
    assert await second.request_cancel("c") is True
    assert await first.cancel_requested("c") is True
    await first.finish_job("c", JobStatus.CANCELLED, now=NOW)
    assert await second.request_cancel("c") is False  # a finished job takes no flag


async def test_heartbeats_tell_which_processes_are_alive(shared_stores: tuple[Store, Store]) -> None:
    first, second = shared_stores
    await first.heartbeat("a", [0, 1], "0.1.0", now=NOW)
    await second.heartbeat("b", [2], "0.1.0", now=NOW + 1)
    await first.heartbeat("a", [0, 1], "0.1.0", now=NOW + 20)
    alive = await second.alive_processes(alive_seconds=15, now=NOW + 20)
    assert [(p.process_id, p.shards, p.started_at) for p in alive] == [("a", (0, 1), NOW)]
    await first.forget_process("a")
    assert await second.alive_processes(alive_seconds=60, now=NOW + 20) == [
        p for p in await first.alive_processes(alive_seconds=60, now=NOW + 20) if p.process_id == "b"
    ]


def _unlimited():  # type: ignore[no-untyped-def]
    from bot.store.records import HoldLimits

    return HoldLimits(allowance=None, period_start=0.0)


async def test_a_full_blocklist_is_never_overfilled_by_two_stores(shared_stores: tuple[Store, Store]) -> None:
    # The count and the insert are one statement, and under PostgreSQL one at a time per server.
    adds = [
        shared_stores[i % 2].add_blocked_term(G, f"word{i}", False, actor_id=ADMIN, now=NOW, max_terms=3)
        for i in range(20)
    ]
    added = [term for term in await asyncio.gather(*adds) if term is not None]
    assert len(added) == 3 and len(await shared_stores[0].blocked_terms(G)) == 3
    assert len([e for e in await shared_stores[1].recent_audit(G, 50) if e.action == "blocked_term.add"]) == 3


async def test_the_default_model_and_its_denial_never_both_pass(shared_stores: tuple[Store, Store]) -> None:
    # One store makes a model the default while the other denies it: one of the two must be refused.
    first, second = shared_stores
    for round_ in range(20):
        model = f"model-{round_}"
        outcomes = await asyncio.gather(
            first.update_policy(G, actor_id=ADMIN, now=NOW, default_model=model),
            second.set_model_rule(G, model, False, actor_id=ADMIN, now=NOW),
            return_exceptions=True,
        )
        refused = [o for o in outcomes if isinstance(o, ModelDisabledError | DefaultModelDisabledError)]
        assert len(refused) == 1, outcomes
    policy = await first.get_policy(G)
    assert policy.default_model is None or policy.is_model_allowed(policy.default_model)


async def test_a_claim_is_submitting_until_marked_and_only_its_owner_marks_it_once(
    shared_stores: tuple[Store, Store],
) -> None:
    first, second = shared_stores
    await first.create_job_with_hold(job("m"), _unlimited(), now=NOW)
    [claimed] = await first.claim_jobs("a", WIDE, lease_seconds=30, now=NOW)
    assert (claimed.status, claimed.submitted_at) == (JobStatus.SUBMITTING, None), "claimed, not submitted yet"
    assert await second.mark_submitted("m", "b", now=NOW + 1) is False, "not the owner"
    assert await first.mark_submitted("m", "a", now=NOW + 1) is True
    assert await first.mark_submitted("m", "a", now=NOW + 2) is False, "once"
    marked = await second.get_job("m")
    assert marked is not None and marked.submitted_at == NOW + 1


async def test_a_cancel_before_the_mark_keeps_the_post_from_going_out(shared_stores: tuple[Store, Store]) -> None:
    first, second = shared_stores
    await first.create_job_with_hold(job("c"), _unlimited(), now=NOW)
    await first.claim_jobs("a", WIDE, lease_seconds=30, now=NOW)
    assert await second.request_cancel("c") is True
    assert await first.mark_submitted("c", "a", now=NOW + 1) is False


async def test_a_released_claim_goes_back_in_line_a_submitted_job_stays_started(
    shared_stores: tuple[Store, Store],
) -> None:
    first, second = shared_stores
    for name in ("unsent", "sent"):
        await first.create_job_with_hold(job(name), _unlimited(), now=NOW)
    await first.claim_jobs("a", WIDE, lease_seconds=30, now=NOW)
    assert await first.mark_submitted("sent", "a", now=NOW + 1) is True
    for name in ("unsent", "sent"):
        assert await first.release_job(name, "a") is True
    unsent, sent = await second.get_job("unsent"), await second.get_job("sent")
    assert unsent is not None and (unsent.status, unsent.owner) == (JobStatus.QUEUED, None)
    assert sent is not None and (sent.status, sent.owner) == (JobStatus.SUBMITTING, None), "its POST may be out"
    [again] = await second.claim_jobs("b", WIDE, lease_seconds=30, now=NOW + 2)
    assert again.id == "unsent"
    taken = await second.take_over_jobs("b", lease_seconds=30, alive_seconds=15, now=NOW + 2)
    assert [j.id for j in taken] == ["sent"], "a taker resumes (refunds) the one whose POST may be out"
