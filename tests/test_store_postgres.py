"""What only PostgreSQL has: the database itself refuses ledger changes, two processes migrating at once,
and DATABASE_URL choosing it."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from bot.store import open_store
from bot.store.common import load_migrations
from bot.store.postgres import PostgresStore
from bot.store.records import Allowance, HoldLimits, JobStatus
from tests.conftest import PG_DSN
from tests.factories import make_job

NOW = 1_710_000_000.0


def test_database_url_picks_postgres() -> None:
    store = open_store("postgresql://postgres@127.0.0.1:5432/test")
    assert isinstance(store, PostgresStore) and store.dsn.endswith("/test")


async def test_two_processes_migrating_at_once_apply_each_migration_once(pg_schema: str) -> None:
    stores = [PostgresStore(PG_DSN, schema=pg_schema, min_size=1, max_size=2) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": pg_schema})
        try:
            versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY version")]
        finally:
            await conn.close()
        assert versions == [v for v, _, _ in load_migrations("postgres")]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_the_database_refuses_ledger_updates_deletes_and_truncate(pg_schema: str) -> None:
    async with PostgresStore(PG_DSN, schema=pg_schema) as store:
        await store.create_job_with_hold(make_job(id="j", count=1, price=5), HoldLimits(None, 0.0), now=NOW)
    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": pg_schema})
    try:
        for statement in ("UPDATE ledger SET amount = 1", "DELETE FROM ledger", "TRUNCATE ledger"):
            with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
                await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM ledger") == 1
    finally:
        await conn.close()


def test_each_dialect_runs_its_own_file_or_the_portable_one() -> None:
    names = {dialect: [name for _, name, _ in load_migrations(dialect)] for dialect in ("sqlite", "postgres")}
    assert names["sqlite"][:2] == ["0001_initial.sql", "0002_spend_buckets.sql"]
    assert names["postgres"][:2] == ["0001_initial.postgres.sql", "0002_spend_buckets.postgres.sql"]
    portable = "0008_leases_and_processes.sql"
    assert portable in names["sqlite"] and portable in names["postgres"]
    assert [v for v, _, _ in load_migrations("sqlite")] == [v for v, _, _ in load_migrations("postgres")]


def test_a_portable_migration_with_real_is_refused_for_postgres(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    package = tmp_path / "fake_migrations"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "0001_a.sql").write_text("-- REAL in a comment is fine\nCREATE TABLE t (x DOUBLE PRECISION);\n")
    (package / "0002_b.sql").write_text("ALTER TABLE t ADD COLUMN seen_at REAL;\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [n for _, n, _ in load_migrations("sqlite", "fake_migrations")] == ["0001_a.sql", "0002_b.sql"]
    with pytest.raises(RuntimeError, match=r"0002_b\.sql uses REAL"):
        load_migrations("postgres", "fake_migrations")
    (package / "0002_b.postgres.sql").write_text("ALTER TABLE t ADD COLUMN seen_at DOUBLE PRECISION;\n")
    assert [n for _, n, _ in load_migrations("postgres", "fake_migrations")] == ["0001_a.sql", "0002_b.postgres.sql"]


async def test_a_hold_in_one_trip_stores_every_value_exactly(pg_schema: str) -> None:
    """The hold goes to the database as text values in an array (hold_after_locks): every kind of value
    (quotes, Korean, what looks like SQL or a parameter, 64-bit ids, fractional epochs, NULLs, a flag)
    comes back exactly as given."""
    job = make_job(
        id="j'1",
        guild_id=2**63 - 1,
        user_id=2**62 + 3,
        prompt="it's a \"fox\" \\ 여우 $1 :amount ); DROP TABLE jobs; --",
        params={"seed": 2**53 + 1, "note": "여우"},
        application_id=None,
        token_expires_at=1_710_000_123.123456789,
        spoiler=True,
        mode="async",
    )
    now = 1_710_000_000.1 + 2**-20
    async with PostgresStore(PG_DSN, schema=pg_schema) as store:
        held = await store.create_job_with_hold(job, HoldLimits(100, 0.0), now=now)
        stored = await store.get_job(job.id)
    assert stored == held
    assert (stored.guild_id, stored.user_id, stored.prompt, stored.params) == (
        job.guild_id, job.user_id, job.prompt, job.params
    )
    assert (stored.created_at, stored.token_expires_at, stored.application_id) == (now, job.token_expires_at, None)
    assert stored.spoiler is True and stored.hold_amount == 5


async def test_holds_and_settlements_arriving_together_go_as_one_batch(pg_schema: str) -> None:
    """Group commit: holds (and settlements) in flight together go to the database as one batch, each
    hold's guard checked after the holds before it: at a member's edge exactly the holds that fit go in,
    and the rest are refused with the true figures."""
    async with PostgresStore(PG_DSN, schema=pg_schema) as store:
        applied: list[int] = []
        apply = store._group._apply

        async def counting(batch):  # type: ignore[no-untyped-def]
            applied.append(len(batch))
            return await apply(batch)

        edge = HoldLimits(100, 0.0)
        await store.create_job_with_hold(make_job(id="other", user_id=101), edge, now=NOW)  # the function is known
        store._group._apply = counting
        results = await asyncio.gather(
            *(store.create_job_with_hold(make_job(id=f"j{i}", price=20), edge, now=NOW) for i in range(8)),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results] == ["JobRecord"] * 5 + ["InsufficientCreditsError"] * 3
        assert all(r.params == {"needed": 20, "available": 0} for r in results[5:])  # type: ignore[union-attr]
        settled = await asyncio.gather(
            *(store.finish_job(f"j{i}", JobStatus.DELIVERED, delivered_count=1, now=NOW + 1) for i in range(5)),
            store.finish_job("j0", JobStatus.FAILED, now=NOW + 1),  # a second settlement: a no-op
        )
        assert [s.charged if s else None for s in settled] == [20] * 5 + [None]
        assert applied[0] == 8 and len(applied) <= 4  # the burst of holds was one batch (refusals retried: none)
        totals = await store.member_totals(1, 100, 0.0)
        assert (totals.captured, totals.held) == (100, 0)


async def test_settlements_of_two_processes_in_opposite_orders_never_deadlock(
    pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two processes settle the jobs of the same 16 members (one per slot of the server's running
    totals) in opposite orders, at once. Each batch locks those rows to COMMIT; in the order the jobs came
    they would wait for each other in a circle (PostgreSQL aborts one after deadlock_timeout and the batch
    is split). Batches settle in one order (server, slot, member), so none waits in a circle."""
    stores = [PostgresStore(PG_DSN, schema=pg_schema, min_size=1, max_size=4) for _ in range(2)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        members = range(1000, 1016)
        for round_ in range(4):
            jobs = {
                (side, user): make_job(id=f"{round_}-{side}-{user}", user_id=user) for side in "ab" for user in members
            }
            await asyncio.gather(
                *(stores[0].create_job_with_hold(job, HoldLimits(None, 0.0), now=NOW) for job in jobs.values())
            )
            caplog.clear()
            settled = await asyncio.gather(
                *(
                    stores[0].finish_job(jobs["a", user].id, JobStatus.DELIVERED, delivered_count=1, now=NOW + 1)
                    for user in members
                ),
                *(
                    stores[1].finish_job(jobs["b", user].id, JobStatus.DELIVERED, delivered_count=1, now=NOW + 1)
                    for user in reversed(members)
                ),
            )
            assert all(s is not None and s.charged == 5 for s in settled)
            assert "applying them one by one" not in caplog.text  # no batch failed (a deadlock would)
        spent = await stores[0].server_spend(1, 0.0)
        assert spent == 4 * 32 * 5
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_reads_in_flight_together_each_get_their_own_rows(pg_schema: str) -> None:
    """The allowance read every hold makes is batched (one statement for a burst): each caller still gets
    its own member's override and its own server's policy and roles, and a member without rows gets none."""
    async with PostgresStore(PG_DSN, schema=pg_schema) as store:
        for guild in (1, 2):
            await store.update_policy(guild, actor_id=0, now=NOW, timezone="Asia/Seoul" if guild == 2 else "UTC")
            await store.set_role_allowance(guild, 70 + guild, Allowance(guild * 10, "day"), actor_id=0, now=NOW)
        for user in range(100, 120, 2):  # every other member has an override of its own
            await store.set_member_allowance(1, user, Allowance(user, "week"), actor_id=0, now=NOW)
        batches: list[int] = []
        apply = store._reads._apply

        async def counting(batch):  # type: ignore[no-untyped-def]
            batches.append(len(batch))
            return await apply(batch)

        store._reads._apply = counting
        asked = [(guild, user) for user in range(100, 120) for guild in (1, 2)]
        answers = await asyncio.gather(*(store.allowance_context(guild, user) for guild, user in asked))
        for (guild, user), (override, roles, policy) in zip(asked, answers, strict=True):
            expected = Allowance(user, "week") if guild == 1 and user % 2 == 0 else None
            assert override == expected
            assert roles == {70 + guild: Allowance(guild * 10, "day")}
            assert (policy.guild_id, policy.timezone) == (guild, "Asia/Seoul" if guild == 2 else "UTC")
        assert sum(batches) == len(asked) and len(batches) <= 3  # the first alone, the rest together
