"""The store contract, on SQLite (file, memory) and PostgreSQL: every method's round trip, exactly-once
settlement, compare-and-set, audit, and two stores on one database (as two processes) never overspending;
SQLite's own migrations and file at the start."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import pytest

from bot.errors import BudgetExhaustedError, InsufficientCreditsError, ServerQueueFullError, TooManyJobsError
from bot.store import Store, open_store
from bot.store.base import DuplicateJobError
from bot.store.records import (
    Allowance,
    EntryKind,
    GuildPolicy,
    HoldLimits,
    JobRecord,
    JobStatus,
    MemberTotals,
    NewJob,
)
from bot.store.sqlite import DURATIONS_KEPT_PER_MODEL, SqliteStore, _load_migrations, _split_statements
from tests.factories import make_job

G, U, ADMIN = 100, 200, 999
NOW = 1_700_000_000.0
UNLIMITED = HoldLimits(allowance=None, period_start=0.0)
ADJUSTMENTS = (EntryKind.GRANT, EntryKind.DEDUCT)


def new_job(job_id: str, *, user_id: int = U, guild_id: int = G, count: int = 2, price: int = 5, **extra) -> NewJob:
    return make_job(
        id=job_id,
        guild_id=guild_id,
        channel_id=300,
        user_id=user_id,
        count=count,
        price=price,
        mode="async",
        params={"size": "1024x1024", "n": count},
        options={"aspect_ratio": "1:1"},
        **extra,
    )


@pytest.fixture
async def file_store(tmp_path: Path):
    async with SqliteStore(str(tmp_path / "bot.db")) as s:
        yield s


# --- migrations and lifetime -----------------------------------------------------------------------------


async def test_migrations_apply_once_and_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "bot.db"  # parent directories are created
    async with SqliteStore(str(path)) as s:
        await s.set_meta("sync_hash", "abc")
        await s.create_job_with_hold(new_job("j1"), UNLIMITED, now=NOW)
    async with SqliteStore(str(path)) as s:
        assert await s.get_meta("sync_hash") == "abc"
        assert (await s.get_job("j1")) is not None
    with sqlite3.connect(path) as db:
        versions = [row[0] for row in db.execute("SELECT version FROM schema_version ORDER BY version")]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert versions == [version for version, _, _ in _load_migrations()]


async def test_open_store_picks_sqlite(tmp_path: Path) -> None:
    assert isinstance(open_store("sqlite+memory:"), SqliteStore)
    store = open_store(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(store, SqliteStore) and store.path == f"{tmp_path}/x.db"


async def test_ledger_is_append_only(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    async with SqliteStore(str(path)) as s:
        await s.add_adjustment(G, U, EntryKind.GRANT, 5, actor_id=ADMIN, reason="gift", now=NOW)
    with sqlite3.connect(path) as db:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE ledger SET amount = 500")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM ledger")


# --- jobs and holds --------------------------------------------------------------------------------------


async def test_create_job_round_trips_every_field(store: Store) -> None:
    job = new_job(
        "j1",
        locale="de",
        application_id=11,
        interaction_token="tok",
        token_expires_at=NOW + 900,
        reply_message_id=12,
        upload_limit=8_000_000,
    )
    created = await store.create_job_with_hold(job, UNLIMITED, now=NOW)
    assert created.status is JobStatus.QUEUED and created.hold_amount == 10 and created.created_at == NOW
    assert await store.get_job("j1") == created
    assert created.params == {"size": "1024x1024", "n": 2} and created.upload_limit == 8_000_000
    assert await store.get_job("missing") is None
    [hold] = await store.ledger_entries(G, 0, NOW + 1)
    assert (hold.kind, hold.amount, hold.job_id, hold.model, hold.actor_id) == (EntryKind.HOLD, 10, "j1", "model-a", U)


async def test_hold_refused_writes_nothing_and_reports_figures(store: Store) -> None:
    limits = HoldLimits(allowance=25, period_start=0.0)
    await store.create_job_with_hold(new_job("j1"), limits, now=NOW)  # 10 held
    await store.create_job_with_hold(new_job("j2"), limits, now=NOW)  # 20 held
    with pytest.raises(InsufficientCreditsError) as refused:
        await store.create_job_with_hold(new_job("j3"), limits, now=NOW)
    assert refused.value.params == {"needed": 10, "available": 5}
    assert await store.get_job("j3") is None
    assert len(await store.ledger_entries(G, 0, NOW + 1)) == 2

    budget = HoldLimits(allowance=None, period_start=0.0, budget=28, budget_period_start=0.0)
    with pytest.raises(BudgetExhaustedError) as exhausted:
        await store.create_job_with_hold(new_job("j4", user_id=U + 1), budget, now=NOW)
    assert exhausted.value.params == {"needed": 10, "remaining": 8}
    assert await store.get_job("j4") is None


async def test_free_job_needs_no_credits(store: Store) -> None:
    await store.add_adjustment(G, U, EntryKind.DEDUCT, 50, actor_id=ADMIN, reason="x", now=NOW)
    job = await store.create_job_with_hold(new_job("free", price=0), HoldLimits(allowance=0, period_start=0), now=NOW)
    assert job.hold_amount == 0
    done = await store.finish_job("free", JobStatus.DELIVERED, delivered_count=2, now=NOW)
    assert done is not None and done.charged == 0
    assert [e.kind for e in await store.ledger_entries(G, 0, NOW + 1)] == [EntryKind.DEDUCT]


async def test_duplicate_job_id_fails_only_that_caller(store: Store) -> None:
    await store.create_job_with_hold(new_job("dup"), UNLIMITED, now=NOW)
    results = await asyncio.gather(
        *(store.create_job_with_hold(new_job(f"ok{i}"), UNLIMITED, now=NOW) for i in range(5)),
        store.create_job_with_hold(new_job("dup"), UNLIMITED, now=NOW),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results[:5]] == ["JobRecord"] * 5
    assert isinstance(results[5], DuplicateJobError)
    totals = await store.member_totals(G, U, 0.0)
    assert totals.held == 60  # the duplicate held nothing more


async def test_finish_job_delivered_captures_delivered_and_releases_rest(store: Store) -> None:
    await store.create_job_with_hold(new_job("j1", count=4, price=5), UNLIMITED, now=NOW)
    done = await store.finish_job("j1", JobStatus.DELIVERED, delivered_count=3, now=NOW + 5)
    assert done is not None
    assert (done.status, done.delivered_count, done.charged, done.finished_at) == (JobStatus.DELIVERED, 3, 15, NOW + 5)
    entries = await store.ledger_entries(G, 0, NOW + 10, user_id=U)
    assert [(e.kind, e.amount, e.model) for e in entries] == [
        (EntryKind.HOLD, 20, "model-a"),
        (EntryKind.CAPTURE, 15, "model-a"),
        (EntryKind.RELEASE, 5, "model-a"),
    ]
    assert await store.member_totals(G, U, 0.0) == MemberTotals(granted=0, captured=15, held=0)


async def test_finish_job_is_exactly_once(store: Store) -> None:
    await store.create_job_with_hold(new_job("j1"), UNLIMITED, now=NOW)
    failed = await store.finish_job("j1", JobStatus.FAILED, error_key="error.upstream", error_detail="502", now=NOW)
    assert failed is not None and failed.charged == 0 and failed.error_key == "error.upstream"
    assert await store.finish_job("j1", JobStatus.DELIVERED, delivered_count=2, now=NOW) is None
    assert await store.finish_job("j1", JobStatus.FAILED, now=NOW) is None
    assert await store.finish_job("nope", JobStatus.CANCELLED, now=NOW) is None
    kinds = [e.kind for e in await store.ledger_entries(G, 0, NOW + 1)]
    assert kinds == [EntryKind.HOLD, EntryKind.RELEASE]
    assert (await store.get_job("j1")).status is JobStatus.FAILED  # type: ignore[union-attr]


async def test_finish_job_rejects_non_terminal_status(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.finish_job("j1", JobStatus.POLLING, now=NOW)


async def test_update_job_compare_and_set(store: Store) -> None:
    await store.create_job_with_hold(new_job("j1"), UNLIMITED, now=NOW)
    assert await store.update_job("j1", expect=[JobStatus.POLLING], status=JobStatus.DELIVERING) is None
    moved = await store.update_job(
        "j1",
        expect=[JobStatus.QUEUED],
        status=JobStatus.POLLING,
        operation_id="op-1",
        params={"n": 1},
        cancel_requested=True,
        started_at=NOW + 1,
    )
    assert moved is not None
    assert (moved.status, moved.operation_id, moved.params, moved.cancel_requested) == (
        JobStatus.POLLING,
        "op-1",
        {"n": 1},
        True,
    )
    assert await store.get_job("j1") == moved
    with pytest.raises(ValueError):
        await store.update_job("j1", status=JobStatus.DELIVERED)
    with pytest.raises(ValueError):
        await store.update_job("j1", charged=0)
    with pytest.raises(ValueError):
        await store.update_job("j1", not_a_field=1)
    await store.finish_job("j1", JobStatus.CANCELLED, now=NOW)
    assert await store.update_job("j1", operation_id="late") is None  # terminal: untouched
    assert await store.update_job("missing", operation_id="x") is None


async def test_a_queued_only_settlement_leaves_a_claimed_job_alone(store: Store) -> None:
    await store.create_job_with_hold(new_job("j1"), UNLIMITED, now=NOW)
    await store.update_job("j1", expect=[JobStatus.QUEUED], status=JobStatus.SUBMITTING)
    assert await store.finish_job("j1", JobStatus.CANCELLED, expect=JobStatus.QUEUED, now=NOW) is None
    job = await store.get_job("j1")
    assert job is not None and job.status == JobStatus.SUBMITTING, "claimed: not settled by the cancel"
    assert (await store.member_totals(G, U, 0)).held == job.hold_amount
    await store.create_job_with_hold(new_job("j2"), UNLIMITED, now=NOW)
    cancelled = await store.finish_job("j2", JobStatus.CANCELLED, expect=JobStatus.QUEUED, now=NOW)
    assert cancelled is not None and cancelled.status == JobStatus.CANCELLED


async def test_queue_limits_hold_under_a_burst(store: Store) -> None:
    limits = HoldLimits(allowance=None, period_start=0.0, max_member_jobs=2, max_guild_jobs=3)
    burst = [new_job(f"m{i}", user_id=U) for i in range(5)] + [new_job(f"o{i}", user_id=U + 1 + i) for i in range(5)]
    results = await asyncio.gather(
        *(store.create_job_with_hold(job, limits, now=NOW) for job in burst), return_exceptions=True
    )
    held = [r for r in results if isinstance(r, JobRecord)]
    assert len(held) == 3, "the server's limit"
    assert sum(1 for r in held if r.user_id == U) <= 2, "the member's limit"
    refusals = [r for r in results if not isinstance(r, JobRecord)]
    assert all(isinstance(r, (TooManyJobsError, ServerQueueFullError)) for r in refusals), refusals
    assert len(await store.active_jobs()) == 3, "a refused request writes nothing"
    await store.finish_job(held[0].id, JobStatus.CANCELLED, now=NOW)  # a finished job frees its place
    assert await store.create_job_with_hold(new_job("late", user_id=U + 9), limits, now=NOW)


async def test_update_job_race_has_one_winner(store: Store) -> None:
    await store.create_job_with_hold(new_job("j1"), UNLIMITED, now=NOW)
    results = await asyncio.gather(
        *(store.update_job("j1", expect=[JobStatus.QUEUED], status=JobStatus.SUBMITTING) for _ in range(10))
    )
    assert sum(r is not None for r in results) == 1


async def test_a_burst_of_status_writes_shares_its_commits(file_store: SqliteStore) -> None:
    """SQLite: single-statement writes arriving together ride the group commit (a batched claim then
    waits behind a few transactions, not behind every job's own write); each is still its own
    compare-and-set, and a bad one fails only its own caller."""
    ids = [f"j{i}" for i in range(50)]
    await asyncio.gather(*(file_store.create_job_with_hold(new_job(job_id), UNLIMITED, now=NOW) for job_id in ids))
    trace: list[str] = []
    await file_store._conn.set_trace_callback(trace.append)
    moved = await asyncio.gather(
        *(file_store.update_job(job_id, expect=[JobStatus.QUEUED], status=JobStatus.SUBMITTING) for job_id in ids),
        file_store.update_job("j0", expect=[JobStatus.QUEUED], status=JobStatus.SUBMITTING),  # loses its race
    )
    await file_store._conn.set_trace_callback(None)
    assert [job.status if job else None for job in moved] == [JobStatus.SUBMITTING] * 50 + [None]
    transactions, inside = 0, False
    for statement in (line.strip().upper() for line in trace):
        if statement.startswith("BEGIN"):
            transactions, inside = transactions + 1, True
        elif statement.startswith(("COMMIT", "ROLLBACK")):
            inside = False
        elif statement.startswith("UPDATE") and not inside:
            transactions += 1  # autocommit: a transaction of its own
    assert 1 <= transactions <= 3
    good, bad = await asyncio.gather(
        file_store.update_job("j1", expect=[JobStatus.SUBMITTING], status=JobStatus.POLLING, operation_id="op1"),
        file_store._single("UPDATE no_such_table SET x = 1", {}),
        return_exceptions=True,
    )
    assert isinstance(good, JobRecord) and good.status == JobStatus.POLLING
    assert isinstance(bad, sqlite3.OperationalError)
    stored = await file_store.get_job("j1")
    assert stored is not None and stored.operation_id == "op1"


async def test_active_and_recent_jobs(store: Store) -> None:
    for i in range(3):
        await store.create_job_with_hold(new_job(f"j{i}"), UNLIMITED, now=NOW + i)
    await store.create_job_with_hold(new_job("other", user_id=U + 1), UNLIMITED, now=NOW + 10)
    await store.finish_job("j1", JobStatus.DELIVERED, delivered_count=1, now=NOW + 20)
    assert [j.id for j in await store.active_jobs()] == ["j0", "j2", "other"]
    assert [j.id for j in await store.recent_jobs(G, U, 2)] == ["j2", "j1"]


async def test_cancelled_caller_still_settles(store: Store) -> None:
    await store.create_job_with_hold(new_job("j1"), UNLIMITED, now=NOW)
    task = asyncio.ensure_future(store.finish_job("j1", JobStatus.DELIVERED, delivered_count=1, now=NOW))
    await asyncio.sleep(0)  # submitted
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The settlement went through anyway: a later one finds the job finished.
    assert await store.finish_job("j1", JobStatus.FAILED, now=NOW) is None
    job = await store.get_job("j1")
    assert job is not None and (job.status, job.charged) == (JobStatus.DELIVERED, 5)


# --- sums and reports ------------------------------------------------------------------------------------


async def test_sums_and_reports(store: Store) -> None:
    await store.add_adjustment(G, U, EntryKind.GRANT, 40, actor_id=ADMIN, reason="event", now=NOW)
    await store.add_adjustment(G, U, EntryKind.DEDUCT, 15, actor_id=ADMIN, reason="abuse", now=NOW)
    await store.add_adjustment(G, U, EntryKind.GRANT, 1000, actor_id=ADMIN, reason="old", now=NOW - 1000)
    await store.create_job_with_hold(new_job("a", count=2, price=5), UNLIMITED, now=NOW)
    await store.create_job_with_hold(new_job("b", count=1, price=7, user_id=U + 1), UNLIMITED, now=NOW)
    await store.create_job_with_hold(new_job("c", count=3, price=1), UNLIMITED, now=NOW)
    await store.finish_job("a", JobStatus.DELIVERED, delivered_count=2, now=NOW + 1)
    await store.finish_job("b", JobStatus.DELIVERED, delivered_count=1, now=NOW + 1)

    totals = await store.member_totals(G, U, NOW - 10)
    assert (totals.granted, totals.captured, totals.held) == (25, 10, 3)
    assert await store.server_spend(G, NOW - 10) == 10 + 7 + 3
    assert await store.server_spend(G + 1, 0) == 0
    assert await store.usage_by_model(G, NOW - 10) == {"model-a": 17}
    assert await store.usage_by_model(G, NOW - 10, user_id=U + 1) == {"model-a": 7}
    assert await store.top_spenders(G, NOW - 10, 5) == [(U, 10), (U + 1, 7)]
    window = await store.ledger_entries(G, NOW - 10, NOW + 1, user_id=U)
    assert [e.kind for e in window] == [EntryKind.GRANT, EntryKind.DEDUCT, EntryKind.HOLD, EntryKind.HOLD]


async def test_add_adjustment_validates_and_audits(store: Store) -> None:
    entry = await store.add_adjustment(G, U, EntryKind.GRANT, 7, actor_id=ADMIN, reason="thanks", now=NOW)
    assert (entry.kind, entry.amount, entry.actor_id, entry.reason) == (EntryKind.GRANT, 7, ADMIN, "thanks")
    assert (await store.ledger_entries(G, 0, NOW + 1)) == [entry]
    [audit] = await store.recent_audit(G, 10)
    assert audit.action == "ledger.grant" and audit.actor_id == ADMIN
    assert audit.detail == {"user_id": U, "kind": "grant", "amount": 7, "reason": "thanks", "entry_id": entry.id}
    for kind, amount in ((EntryKind.CAPTURE, 5), (EntryKind.GRANT, 0), (EntryKind.DEDUCT, -3)):
        with pytest.raises(ValueError):
            await store.add_adjustment(G, U, kind, amount, actor_id=ADMIN, reason="", now=NOW)


# --- policy, allowances, audit, moderation, small state ---------------------------------------------------


async def test_policy_defaults_and_updates_are_audited(store: Store) -> None:
    assert await store.get_policy(G) == GuildPolicy(guild_id=G)
    policy = await store.update_policy(
        G,
        actor_id=ADMIN,
        now=NOW,
        timezone="Europe/Berlin",
        default_allowance=Allowance(50, "day"),
        budget=Allowance(None, "month"),
        quote_threshold=30,
    )
    assert policy == await store.get_policy(G)
    assert (policy.timezone, policy.default_allowance, policy.budget, policy.quote_threshold) == (
        "Europe/Berlin",
        Allowance(50, "day"),
        Allowance(None, "month"),
        30,
    )
    policy = await store.update_policy(G, actor_id=ADMIN, now=NOW, budget=None, models_allowed_by_default=False)
    assert policy.budget is None and policy.default_allowance == Allowance(50, "day")
    assert policy.models_allowed_by_default is False
    policy = await store.set_model_rule(G, "model-a", True, actor_id=ADMIN, now=NOW)
    assert policy.model_rules == {"model-a": True} and policy.is_model_allowed("model-a")
    assert not policy.is_model_allowed("model-b")
    policy = await store.set_model_rule(G, "model-a", None, actor_id=ADMIN, now=NOW)
    assert policy.model_rules == {}
    with pytest.raises(ValueError):
        await store.update_policy(G, actor_id=ADMIN, now=NOW, model_rules={})
    audit = await store.recent_audit(G, 10)
    assert [a.action for a in audit] == ["policy.model_rule", "policy.model_rule", "policy.update", "policy.update"]
    assert audit[-1].detail["default_allowance"] == {"amount": 50, "period": "day"}
    assert await store.get_policy(G + 1) == GuildPolicy(guild_id=G + 1)


async def test_role_and_member_allowances_are_audited(store: Store) -> None:
    await store.set_role_allowance(G, 1, Allowance(100, "week"), actor_id=ADMIN, now=NOW)
    await store.set_role_allowance(G, 2, Allowance(None, "unlimited"), actor_id=ADMIN, now=NOW)
    await store.set_role_allowance(G, 1, Allowance(120, "week"), actor_id=ADMIN, now=NOW)
    assert await store.role_allowances(G) == {1: Allowance(120, "week"), 2: Allowance(None, "unlimited")}
    await store.set_role_allowance(G, 2, None, actor_id=ADMIN, now=NOW)
    assert await store.role_allowances(G) == {1: Allowance(120, "week")}
    assert await store.member_allowance(G, U) is None
    await store.set_member_allowance(G, U, Allowance(5, "day"), actor_id=ADMIN, now=NOW)
    assert await store.member_allowance(G, U) == Allowance(5, "day")
    await store.set_member_allowance(G, U, None, actor_id=ADMIN, now=NOW)
    assert await store.member_allowance(G, U) is None
    actions = [a.action for a in await store.recent_audit(G, 10)]
    assert actions == ["allowance.member"] * 2 + ["allowance.role"] * 4
    assert len(await store.recent_audit(G, 2)) == 2


async def test_allowance_context_matches_the_separate_reads(store: Store) -> None:
    assert await store.allowance_context(G, U) == (None, {}, GuildPolicy(guild_id=G))
    await store.update_policy(G, actor_id=ADMIN, now=NOW, timezone="Asia/Tokyo", budget=Allowance(9, "day"))
    await store.set_model_rule(G, "model-a", False, actor_id=ADMIN, now=NOW)
    await store.set_role_allowance(G, 1, Allowance(10, "day"), actor_id=ADMIN, now=NOW)
    await store.set_role_allowance(G, 2, Allowance(None, "unlimited"), actor_id=ADMIN, now=NOW)
    await store.set_member_allowance(G, U, Allowance(None, "week"), actor_id=ADMIN, now=NOW)
    separate = (await store.member_allowance(G, U), await store.role_allowances(G), await store.get_policy(G))
    assert await store.allowance_context(G, U) == separate
    assert await Store.allowance_context(store, G, U) == separate  # the interface's default composes the same
    assert (await store.allowance_context(G, U + 1))[0] is None


async def test_blocked_terms_are_audited(store: Store) -> None:
    term = await store.add_blocked_term(G, r"\bgore\b", True, actor_id=ADMIN, now=NOW)
    other = await store.add_blocked_term(G, "spoiler", False, actor_id=ADMIN, now=NOW)
    assert await store.blocked_terms(G) == [term, other]
    assert term.is_regex and term.created_by == ADMIN
    assert await store.remove_blocked_term(G, term.id, actor_id=ADMIN, now=NOW) is True
    assert await store.remove_blocked_term(G, term.id, actor_id=ADMIN, now=NOW) is False
    assert await store.remove_blocked_term(G + 1, other.id, actor_id=ADMIN, now=NOW) is False
    assert await store.blocked_terms(G) == [other]
    audit = await store.recent_audit(G, 10)
    assert [a.action for a in audit] == ["blocked_term.remove", "blocked_term.add", "blocked_term.add"]
    assert audit[0].detail["term_id"] == term.id and audit[-1].detail["term_id"] == term.id


async def test_the_blocklist_version_changes_with_every_change_and_only_then(store: Store) -> None:
    assert await store.blocklist_version(G) == 0
    term = await store.add_blocked_term(G, "gore", False, actor_id=ADMIN, now=NOW)
    assert term is not None
    after_add = await store.blocklist_version(G)
    assert after_add != 0 and await store.blocklist_version(G + 1) == 0
    assert await store.remove_blocked_term(G, term.id + 99, actor_id=ADMIN, now=NOW) is False
    assert await store.add_blocked_term(G, "x", False, actor_id=ADMIN, now=NOW, max_terms=1) is None
    assert await store.blocklist_version(G) == after_add, "a refused change is no change"
    assert await store.remove_blocked_term(G, term.id, actor_id=ADMIN, now=NOW)
    assert await store.blocklist_version(G) not in (0, after_add)


async def test_durations_keep_the_newest(store: Store) -> None:
    for i in range(DURATIONS_KEPT_PER_MODEL + 20):
        await store.record_duration("model-a", float(i), now=NOW + i)
    await store.record_duration("model-b", 3.5, now=NOW)
    newest = await store.recent_durations("model-a", 1000)
    assert len(newest) == DURATIONS_KEPT_PER_MODEL and newest[:2] == [119.0, 118.0]
    assert await store.recent_durations("model-b", 5) == [3.5]


async def test_meta(store: Store) -> None:
    assert await store.get_meta("k") is None
    await store.set_meta("k", "1")
    await store.set_meta("k", "2")
    assert await store.get_meta("k") == "2"


# --- two processes on one database ------------------------------------------------------------------------


async def test_two_stores_on_one_database_never_overspend(shared_stores: tuple[Store, Store]) -> None:
    limits = HoldLimits(allowance=100, period_start=0.0)
    first, second = shared_stores
    stores = (first, second)
    results = await asyncio.gather(
        *(
            stores[i % 2].create_job_with_hold(new_job(f"j{i}", count=1, price=7), limits, now=NOW)
            for i in range(40)
        ),
        return_exceptions=True,
    )
    held = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, InsufficientCreditsError)]
    assert len(held) == 100 // 7 and len(refused) == 40 - 100 // 7
    assert all(r.params == {"needed": 7, "available": 100 - 7 * 14} for r in refused)
    # settle from both sides at once: each job captured once
    settled = await asyncio.gather(
        *(s.finish_job(job.id, JobStatus.DELIVERED, delivered_count=1, now=NOW) for job in held for s in stores)
    )
    assert sum(r is not None for r in settled) == len(held)
    totals = await first.member_totals(G, U, 0.0)
    assert (totals.captured, totals.held) == (7 * 14, 0)


# --- running totals (migration 0002) ------------------------------------------------------------------------


async def test_period_sums_are_exact_for_any_period_start(store: Store) -> None:
    rng = random.Random(7)
    base = 1_700_000_123.25  # not on a 15-minute boundary
    aligned = 1_700_001_000.0  # a 15-minute boundary: lines at it and just after it are edge cases
    times = sorted([base + rng.uniform(0, 6 * 3600) for _ in range(60)] + [aligned, aligned + 0.5])
    for n, t in enumerate(times):
        user = U + n % 2
        if n % 3 == 0:
            kind = EntryKind.GRANT if n % 2 else EntryKind.DEDUCT
            await store.add_adjustment(G, user, kind, 1 + n, actor_id=ADMIN, reason="", now=t)
        else:
            await store.create_job_with_hold(new_job(f"j{n}", user_id=user, count=1, price=n), UNLIMITED, now=t)
            if n % 4:
                await store.finish_job(f"j{n}", JobStatus.DELIVERED, delivered_count=1, now=t)
    entries = await store.ledger_entries(G, 0.0, 4e9)
    starts = [0.0, base - 1, base, *times[::7], times[10] + 1e-6, aligned, aligned + 0.25, times[-1] + 1]
    for start in starts:
        for user in (U, U + 1):
            mine = [e for e in entries if e.user_id == user and e.created_at >= start]
            granted = sum(e.amount if e.kind is EntryKind.GRANT else -e.amount for e in mine if e.kind in ADJUSTMENTS)
            captured = sum(e.amount for e in mine if e.kind is EntryKind.CAPTURE)
            totals = await store.member_totals(G, user, start)
            assert (totals.granted, totals.captured) == (granted, captured), start
        held = (await store.member_totals(G, U, 0.0)).held + (await store.member_totals(G, U + 1, 0.0)).held
        spent = sum(e.amount for e in entries if e.kind is EntryKind.CAPTURE and e.created_at >= start)
        assert await store.server_spend(G, start) == spent + held, start


async def test_later_migration_backfills_an_existing_database(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    first_version, first_name, first_sql = _load_migrations()[0]
    with sqlite3.connect(path) as db:  # a database made by a bot that only knew 0001
        db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL)")
        for statement in _split_statements(first_sql):
            db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (?, ?, 0)", (first_version, first_name))
        db.execute(
            "INSERT INTO ledger (guild_id, user_id, kind, amount, actor_id, created_at)"
            " VALUES (?, ?, 'grant', 40, ?, ?)",
            (G, U, ADMIN, NOW),
        )
    async with SqliteStore(str(path)) as s:
        assert (await s.member_totals(G, U, NOW - 3600)).granted == 40
        await s.add_adjustment(G, U, EntryKind.DEDUCT, 15, actor_id=ADMIN, reason="", now=NOW + 1)
        assert (await s.member_totals(G, U, NOW - 3600)).granted == 25
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY 1")] == [
            v for v, _, _ in _load_migrations()
        ]


async def test_settlement_never_captures_more_than_was_asked(store: Store) -> None:
    await store.create_job_with_hold(new_job("j1", count=2, price=5), UNLIMITED, now=NOW)
    done = await store.finish_job("j1", JobStatus.DELIVERED, delivered_count=5, now=NOW)
    assert done is not None and done.delivered_count == 2 and done.charged == 10
    captured = [e for e in await store.ledger_entries(G, 0, 1e12) if e.kind == EntryKind.CAPTURE]
    assert [e.amount for e in captured] == [10]


async def test_a_period_starting_inside_a_bucket_counts_its_first_lines(store: Store) -> None:
    # The period starts 100 s into a 15-minute bucket; 40 credits were spent before the bucket ends.
    start = 900 * 1000 + 100
    limits = HoldLimits(allowance=50, period_start=start)
    await store.create_job_with_hold(new_job("spent", count=1, price=40), limits, now=start + 10)
    await store.finish_job("spent", JobStatus.DELIVERED, delivered_count=1, now=start + 20)
    with pytest.raises(InsufficientCreditsError) as refused:
        await store.create_job_with_hold(new_job("more", count=1, price=20), limits, now=start + 30)
    assert refused.value.params["available"] == 10
# --- issue 13: saved defaults, styles, channel rules, spoilers, job provenance ----------------------------


async def test_member_defaults_are_per_member_and_server_and_can_be_forgotten(store: Store) -> None:
    assert await store.member_defaults(G, U) == {}
    await store.set_member_defaults(G, U, {"model": "m", "count": 2}, now=NOW)
    await store.set_member_defaults(G, U, {"model": "n"}, now=NOW + 1)  # replaces
    assert await store.member_defaults(G, U) == {"model": "n"}
    assert await store.member_defaults(G + 1, U) == {} and await store.member_defaults(G, U + 1) == {}
    await store.set_member_defaults(G, U, None, now=NOW + 2)
    assert await store.member_defaults(G, U) == {}


async def test_styles_are_put_replaced_and_removed_with_audit(store: Store) -> None:
    await store.put_style(G, "noir", "{prompt}, noir", actor_id=ADMIN, now=NOW)
    await store.put_style(G, "noir", "{prompt}, film noir", actor_id=ADMIN, now=NOW + 1)
    await store.put_style(G, "anime", "{prompt}, anime", actor_id=ADMIN, now=NOW + 2)
    assert [(s.name, s.template) for s in await store.styles(G)] == [
        ("anime", "{prompt}, anime"),
        ("noir", "{prompt}, film noir"),
    ]
    assert await store.styles(G + 1) == []
    assert await store.remove_style(G, "noir", actor_id=ADMIN, now=NOW + 3)
    assert not await store.remove_style(G, "noir", actor_id=ADMIN, now=NOW + 4)
    actions = [e.action for e in await store.recent_audit(G, 10)]
    assert actions == ["style.remove", "style.put", "style.put", "style.put"]


async def test_channel_rules_change_only_when_something_changes(store: Store) -> None:
    assert await store.allowed_channels(G) == []
    assert await store.set_channel_allowed(G, 7, True, actor_id=ADMIN, now=NOW)
    assert not await store.set_channel_allowed(G, 7, True, actor_id=ADMIN, now=NOW)
    assert await store.set_channel_allowed(G, 5, True, actor_id=ADMIN, now=NOW)
    assert await store.allowed_channels(G) == [5, 7]
    assert await store.set_channel_allowed(G, 7, False, actor_id=ADMIN, now=NOW)
    assert not await store.set_channel_allowed(G, 7, False, actor_id=ADMIN, now=NOW)
    assert await store.allowed_channels(G) == [5]
    assert [e.action for e in await store.recent_audit(G, 10)] == ["channel.disallow", "channel.allow", "channel.allow"]


async def test_spoiler_mode_and_job_provenance_are_stored(store: Store) -> None:
    assert (await store.get_policy(G)).spoiler_mode == "off"
    policy = await store.update_policy(G, actor_id=ADMIN, now=NOW, spoiler_mode="outside_nsfw")
    assert policy.spoiler_mode == "outside_nsfw" == (await store.get_policy(G)).spoiler_mode
    record = await store.create_job_with_hold(
        new_job("a" * 32, style="noir", remix_of="b" * 32, spoiler=True), UNLIMITED, now=NOW
    )
    stored = await store.get_job(record.id)
    assert stored is not None and (stored.style, stored.remix_of, stored.spoiler) == ("noir", "b" * 32, True)
    assert (record.style, record.remix_of, record.spoiler) == ("noir", "b" * 32, True)
