"""Throughput of the credit path: hold (Ledger.hold_for_job) then finish_job(DELIVERED), per member task.

    .venv/bin/python -m bench.bench_ledger [--members 100] [--pairs 20000] [--budget]
        [--store sqlite|postgres] [--processes 1|2] [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

Runs on a SQLite file in a temporary directory (WAL, synchronous=NORMAL, as the bot runs), or with
`--store postgres` on a fresh, uniquely named PostgreSQL database (created at `--dsn`'s server, dropped
after). `--processes 2` splits the members between two processes sharing the database (PostgreSQL only),
started together. Every member has an allowance large enough never to refuse, so each pair is one hold and
one capture. Prints pairs per second, the total, and p50/p99 latency of one pair (hold + capture) as a
member task sees it. With `--budget` the server also has a (never reached) budget, so every hold sums the
server's spend too (and, on PostgreSQL, takes the server's advisory lock exclusively).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

from bot.credits.ledger import Ledger
from bot.store.base import Store
from bot.store.postgres import PostgresStore
from bot.store.records import Allowance, JobStatus, NewJob
from bot.store.sqlite import SqliteStore

GUILD_ID = 1
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
POOL_SIZE = 20  # connections per process


async def _member(ledger: Ledger, user_id: int, pairs: int, latencies: list[float]) -> None:
    for n in range(pairs):
        job = NewJob(
            id=f"{user_id}-{n}",
            guild_id=GUILD_ID,
            channel_id=10,
            user_id=user_id,
            model="bench-model",
            prompt="a lighthouse at dusk",
            count=2,
            price=5,
            params={"aspect_ratio": "1:1"},
            options={"aspect_ratio": "1:1"},
            mode="sync",
        )
        started = time.perf_counter()
        await ledger.hold_for_job(job, role_ids=())
        await ledger.settle(job.id, JobStatus.DELIVERED, delivered_count=1)
        latencies.append(time.perf_counter() - started)


def _report(label: str, latencies: list[float], elapsed: float) -> None:
    total = len(latencies)
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(total - 1, int(total * 0.99))] * 1000
    print(f"{label} pairs={total} elapsed={elapsed:.2f}s")
    print(f"throughput: {total / elapsed:,.0f} pairs/s")
    print(f"latency per pair: p50 {p50:.1f} ms, p99 {p99:.1f} ms")


async def _drive(store: Store, user_ids: range, per_member: int, budget: bool, *, setup: bool) -> list[float]:
    ledger = Ledger(store, default_allowance=Allowance(amount=10**12, period="month"))
    if budget and setup:
        cap = Allowance(amount=10**12, period="month")
        await store.update_policy(GUILD_ID, actor_id=0, now=time.time(), budget=cap)
    latencies: list[float] = []
    await asyncio.gather(*(_member(ledger, user_id, per_member, latencies) for user_id in user_ids))
    return latencies


@asynccontextmanager
async def _postgres_database(dsn: str) -> AsyncIterator[str]:
    """A fresh database on `dsn`'s server, dropped after; yields its DSN."""
    import asyncpg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        try:
            yield urlsplit(dsn)._replace(path=f"/{name}").geturl()
        finally:
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


def _worker(dsn: str, user_ids: range, per_member: int, start_at: float, out: multiprocessing.Queue) -> None:
    async def go() -> list[float]:
        async with PostgresStore(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE) as store:
            await asyncio.sleep(max(0.0, start_at - time.time()))  # both processes start together
            return await _drive(store, user_ids, per_member, budget=False, setup=False)

    latencies = asyncio.run(go())
    out.put((time.time(), latencies))


async def run(
    members: int, pairs: int, *, budget: bool = False, store: str = "sqlite", processes: int = 1, dsn: str = DEFAULT_DSN
) -> None:
    per_member = max(1, pairs // members)
    users = range(1000, 1000 + members)
    label = f"store={store} processes={processes} members={members} budget={'on' if budget else 'off'}"
    if store == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            async with SqliteStore(str(Path(tmp) / "bench.db")) as db:
                started = time.perf_counter()
                latencies = await _drive(db, users, per_member, budget, setup=True)
                _report(label, latencies, time.perf_counter() - started)
        return
    async with _postgres_database(dsn) as bench_dsn:
        async with PostgresStore(bench_dsn, min_size=POOL_SIZE, max_size=POOL_SIZE) as db:  # migrates
            if processes == 1:
                started = time.perf_counter()
                latencies = await _drive(db, users, per_member, budget, setup=True)
                _report(label, latencies, time.perf_counter() - started)
                return
            if budget:
                await db.update_policy(
                    GUILD_ID, actor_id=0, now=time.time(), budget=Allowance(amount=10**12, period="month")
                )
        context = multiprocessing.get_context("spawn")
        out: multiprocessing.Queue = context.Queue()
        start_at = time.time() + 3.0  # time for both to start and open their pools
        # Contiguous ranges, not every other member: one server's members in every process, each process
        # settling into all 16 slots of the server's running totals (the worst case for row locks).
        size = math.ceil(len(users) / processes)
        halves = [users[i * size : (i + 1) * size] for i in range(processes)]
        workers = [
            context.Process(target=_worker, args=(bench_dsn, half, per_member, start_at, out)) for half in halves
        ]
        for worker in workers:
            worker.start()
        results = [await asyncio.to_thread(out.get) for _ in workers]
        for worker in workers:
            worker.join()
        ended = max(finished for finished, _ in results)
        _report(label, [x for _, lat in results for x in lat], ended - start_at)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=20_000, help="total hold+capture pairs")
    parser.add_argument("--budget", action="store_true", help="give the server a budget (never reached)")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--processes", type=int, default=1, help="processes sharing the database (postgres)")
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="the PostgreSQL server (a database is made there)")
    args = parser.parse_args()
    if args.processes > 1 and args.store != "postgres":
        parser.error("--processes > 1 needs --store postgres")
    asyncio.run(
        run(args.members, args.pairs, budget=args.budget, store=args.store, processes=args.processes, dsn=args.dsn)
    )


if __name__ == "__main__":
    main()
