"""Rule-based tests of the credit rules over random sequences of holds, partial deliveries, failures,
grants, deductions and period resets (an injected clock jumps forward), on a fresh store per example.

Invariants checked after every step:
* `balance()` equals an independent model of the rules (granted, captured, held, available);
* the ledger lines add up to what `balance()` reports: grants − deductions and captures in the period,
  and all-time holds − captures − releases = what is held now;
* every job has at most one capture and one release, and a settled hold is exactly capture + release;
* a hold succeeds exactly when the model says it fits, and never leaves available below zero.

What about a negative balance? A hold never makes `available` negative. It can be negative only through
a deduction, or a period reset while holds of the old period (perhaps funded by a grant of that period)
are still open: captures count in the period they happen. So the step invariant is "no operation but a
deduction or a reset lowers available", and "after a successful paid hold, available >= 0".
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bot.credits.ledger import Ledger, period_bounds
from bot.errors import InsufficientCreditsError
from bot.store.base import Store
from bot.store.postgres import PostgresStore
from bot.store.records import Allowance, EntryKind, JobStatus
from bot.store.sqlite import SqliteStore
from tests.conftest import PG_DSN, pg_admin, require_postgres
from tests.factories import make_job

G, U, ADMIN = 1, 2, 3
ALLOWANCE = 100
START = 1_704_067_200.0  # 2024-01-01 00:00 UTC
FAR_FUTURE = 4_102_444_800.0  # 2100


@dataclass
class ModelJob:
    count: int
    price: int
    settled: bool = False

    @property
    def amount(self) -> int:
        return self.count * self.price


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        self.store = self.make_store()
        self.run(self.store.open())
        self.ledger = Ledger(self.store, default_allowance=Allowance(ALLOWANCE, "month"), clock=self.clock)
        self.jobs: dict[str, ModelJob] = {}
        self.granted = 0  # grants − deductions in the current period
        self.captured = 0  # captured in the current period
        self.serial = 0

    def make_store(self) -> Store:
        return SqliteStore(":memory:")

    def run(self, coroutine):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()

    # --- the model ------------------------------------------------------------------------------------

    @property
    def held(self) -> int:
        return sum(j.amount for j in self.jobs.values() if not j.settled)

    @property
    def available(self) -> int:
        return ALLOWANCE + self.granted - self.captured - self.held

    def open_ids(self) -> list[str]:
        return sorted(job_id for job_id, j in self.jobs.items() if not j.settled)

    def settled_ids(self) -> list[str]:
        return sorted(job_id for job_id, j in self.jobs.items() if j.settled)

    # --- rules ----------------------------------------------------------------------------------------

    @rule(count=st.integers(1, 4), price=st.integers(0, 30))
    def hold(self, count: int, price: int) -> None:
        self._hold(count, price)

    @rule(delta=st.sampled_from([-1, 0, 1]))
    def hold_at_the_edge(self, delta: int) -> None:
        """A one-image hold of exactly what is available, one less or one more."""
        self._hold(1, max(self.available + delta, 1))

    def _hold(self, count: int, price: int) -> None:
        self.serial += 1
        job_id = f"job-{self.serial}"
        amount = count * price
        fits = amount == 0 or self.available >= amount
        expected_available = self.available
        new_job = make_job(
            id=job_id, guild_id=G, channel_id=4, user_id=U, model=f"model-{price % 3}", count=count, price=price
        )
        try:
            record = self.run(self.ledger.hold_for_job(new_job, []))
        except InsufficientCreditsError as refused:
            assert not fits, f"refused a hold of {amount} with {expected_available} available"
            assert refused.params == {"needed": amount, "available": max(expected_available, 0)}
            assert self.run(self.store.get_job(job_id)) is None
            return
        assert fits, f"held {amount} with only {expected_available} available"
        assert record.hold_amount == amount and record.status is JobStatus.QUEUED
        self.jobs[job_id] = ModelJob(count, price)
        if amount > 0:
            assert self.available >= 0

    @precondition(lambda self: self.open_ids())
    @rule(data=st.data(), outcome=st.sampled_from(["delivered", "failed", "cancelled"]))
    def settle(self, data: st.DataObject, outcome: str) -> None:
        job_id = data.draw(st.sampled_from(self.open_ids()))
        job = self.jobs[job_id]
        delivered = data.draw(st.integers(0, job.count)) if outcome == "delivered" else 0
        before = self.available
        record = self.run(self.ledger.settle(job_id, JobStatus(outcome), delivered_count=delivered))
        assert record is not None
        charge = delivered * job.price
        assert record.charged == charge and record.status == JobStatus(outcome)
        job.settled = True
        self.captured += charge
        assert self.available >= before  # settling never lowers what is available

    @precondition(lambda self: self.settled_ids())
    @rule(data=st.data(), outcome=st.sampled_from(["delivered", "failed", "cancelled"]))
    def settle_again(self, data: st.DataObject, outcome: str) -> None:
        job_id = data.draw(st.sampled_from(self.settled_ids()))
        assert self.run(self.ledger.settle(job_id, JobStatus(outcome), delivered_count=4)) is None

    @rule(amount=st.integers(1, 60))
    def grant(self, amount: int) -> None:
        self.run(self.ledger.grant(G, U, amount, actor_id=ADMIN, reason="prop"))
        self.granted += amount

    @rule(amount=st.integers(1, 80))
    def deduct(self, amount: int) -> None:
        self.run(self.ledger.deduct(G, U, amount, actor_id=ADMIN, reason="prop"))
        self.granted -= amount

    @rule(step=st.sampled_from([1.0, 3600.0, 3 * 86400.0, 12 * 86400.0, 40 * 86400.0]))
    def advance_clock(self, step: float) -> None:
        old_start, _ = period_bounds("month", self.clock.now)
        self.clock.now += step
        if period_bounds("month", self.clock.now)[0] != old_start:
            self.granted = 0
            self.captured = 0

    # --- invariants -----------------------------------------------------------------------------------

    @invariant()
    def balance_matches_the_model(self) -> None:
        balance = self.run(self.ledger.balance(G, U, []))
        assert (balance.granted, balance.captured, balance.held) == (self.granted, self.captured, self.held)
        assert balance.available == self.available
        assert balance.period_start <= self.clock.now < (balance.resets_at or FAR_FUTURE)

    @invariant()
    def ledger_lines_add_up(self) -> None:
        balance = self.run(self.ledger.balance(G, U, []))
        entries = self.run(self.store.ledger_entries(G, 0.0, FAR_FUTURE, user_id=U))
        in_period = [e for e in entries if e.created_at >= balance.period_start]
        sums = Counter[EntryKind]()
        for entry in in_period:
            sums[entry.kind] += entry.amount
        assert sums[EntryKind.GRANT] - sums[EntryKind.DEDUCT] == balance.granted
        assert sums[EntryKind.CAPTURE] == balance.captured
        every = Counter[EntryKind]()
        for entry in entries:
            assert entry.amount > 0
            every[entry.kind] += entry.amount
        assert every[EntryKind.HOLD] - every[EntryKind.CAPTURE] - every[EntryKind.RELEASE] == balance.held

    @invariant()
    def every_hold_settles_exactly_once(self) -> None:
        entries = self.run(self.store.ledger_entries(G, 0.0, FAR_FUTURE, user_id=U))
        lines: dict[str, Counter[EntryKind]] = {}
        counts: dict[str, Counter[EntryKind]] = {}
        for entry in entries:
            if entry.job_id is not None:
                lines.setdefault(entry.job_id, Counter())[entry.kind] += entry.amount
                counts.setdefault(entry.job_id, Counter())[entry.kind] += 1
        for job_id, job in self.jobs.items():
            got = lines.get(job_id, Counter())
            assert all(n == 1 for n in counts.get(job_id, Counter()).values())
            assert got[EntryKind.HOLD] == job.amount
            if job.settled:
                assert got[EntryKind.CAPTURE] + got[EntryKind.RELEASE] == job.amount
            else:
                assert got[EntryKind.CAPTURE] == got[EntryKind.RELEASE] == 0


LedgerMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerRules = LedgerMachine.TestCase


class PostgresLedgerMachine(LedgerMachine):
    """The same rules on PostgreSQL, a fresh schema per example (dropped after it)."""

    def make_store(self) -> Store:
        self.run(require_postgres())
        self.schema = f"t_{uuid.uuid4().hex[:16]}"
        self.run(pg_admin(f"CREATE SCHEMA {self.schema}"))
        return PostgresStore(PG_DSN, schema=self.schema, min_size=1, max_size=2)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.run(pg_admin(f"DROP SCHEMA {self.schema} CASCADE"))
        self.loop.close()


PostgresLedgerMachine.TestCase.settings = LedgerMachine.TestCase.settings
TestLedgerRulesPostgres = PostgresLedgerMachine.TestCase
