"""Throughput of the credit path: hold (Ledger.hold_for_job) then finish_job(DELIVERED), per member task.

    .venv/bin/python -m bench.bench_ledger [--members 100] [--pairs 20000] [--budget]

Runs on a SQLite file in a temporary directory (WAL, synchronous=NORMAL, as the bot runs). Every member has
an allowance large enough never to refuse, so each pair is one hold and one capture. Prints pairs per
second, the total, and p50/p99 latency of one pair (hold + capture) as a member task sees it. With
`--budget` the server also has a (never reached) budget, so every hold sums the server's spend too.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bot.ledger import Ledger
from bot.store.records import Allowance, JobStatus, NewJob
from bot.store.sqlite import SqliteStore

GUILD_ID = 1


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


async def run(members: int, pairs: int, *, budget: bool = False) -> None:
    per_member = max(1, pairs // members)
    with tempfile.TemporaryDirectory() as tmp:
        async with SqliteStore(str(Path(tmp) / "bench.db")) as store:
            ledger = Ledger(store, default_allowance=Allowance(amount=10**12, period="month"))
            if budget:
                await store.update_policy(
                    GUILD_ID, actor_id=0, now=time.time(), budget=Allowance(amount=10**12, period="month")
                )
            latencies: list[float] = []
            started = time.perf_counter()
            await asyncio.gather(*(_member(ledger, 1000 + m, per_member, latencies) for m in range(members)))
            elapsed = time.perf_counter() - started
    total = len(latencies)
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(total - 1, int(total * 0.99))] * 1000
    print(f"members={members} pairs={total} budget={'on' if budget else 'off'} elapsed={elapsed:.2f}s")
    print(f"throughput: {total / elapsed:,.0f} pairs/s")
    print(f"latency per pair: p50 {p50:.1f} ms, p99 {p99:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=20_000, help="total hold+capture pairs")
    parser.add_argument("--budget", action="store_true", help="give the server a budget (never reached)")
    args = parser.parse_args()
    asyncio.run(run(args.members, args.pairs, budget=args.budget))


if __name__ == "__main__":
    main()
