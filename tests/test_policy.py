"""Admin changes through the core: validated before writing, audited, and reflected in credits."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest

from bot.catalog import Catalog
from bot.errors import (
    DefaultModelDisabledError,
    InvalidAmountError,
    InvalidValueError,
    ModelDisabledError,
    UnknownModelError,
)
from bot.ledger import Ledger
from bot.policy import PolicyService
from bot.store.records import Allowance, JobStatus
from bot.store.sqlite import SqliteStore
from tests.factories import make_job

GUILD, ADMIN, MEMBER = 1, 900, 100
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture
def ledger(store: SqliteStore) -> Ledger:
    return Ledger(store, default_allowance=Allowance(500, "month"), clock=lambda: NOW)


@pytest.fixture
def policy(store: SqliteStore, ledger: Ledger) -> PolicyService:
    return PolicyService(store, ledger, Catalog.load(), bot_default_model="gemini-2.5-flash-image", clock=lambda: NOW)


@pytest.mark.parametrize("amount", [-1, 1_000_001, None, True])
async def test_bad_amounts_are_refused_and_nothing_is_written(
    policy: PolicyService, store: SqliteStore, amount: object
) -> None:
    with pytest.raises(InvalidAmountError):
        await policy.set_default_allowance(GUILD, ADMIN, amount, "month")  # type: ignore[arg-type]
    with pytest.raises(InvalidAmountError):
        await policy.set_member_allowance(GUILD, ADMIN, MEMBER, amount, "day")  # type: ignore[arg-type]
    assert await store.recent_audit(GUILD, 10) == []
    assert (await store.get_policy(GUILD)).default_allowance is None


async def test_bad_period_timezone_and_model_are_refused(policy: PolicyService, store: SqliteStore) -> None:
    with pytest.raises(InvalidValueError):
        await policy.set_budget(GUILD, ADMIN, 100, "fortnight")
    with pytest.raises(InvalidValueError):
        await policy.set_timezone(GUILD, ADMIN, "Mars/Olympus_Mons")
    with pytest.raises(UnknownModelError):
        await policy.set_model_allowed(GUILD, ADMIN, "dall-e-9", False)
    with pytest.raises(InvalidValueError):
        await policy.add_blocked_term(GUILD, ADMIN, "(unclosed", True)
    assert await store.recent_audit(GUILD, 10) == []


async def test_changes_are_audited_and_take_effect(policy: PolicyService, ledger: Ledger, store: SqliteStore) -> None:
    await policy.set_default_allowance(GUILD, ADMIN, 50, "day")
    await policy.set_role_allowance(GUILD, ADMIN, 7, 80, "day")
    assert (await ledger.balance(GUILD, MEMBER, [])).available == 50
    assert (await ledger.balance(GUILD, MEMBER, [7])).available == 80
    await policy.set_member_allowance(GUILD, ADMIN, MEMBER, None, "unlimited")
    assert (await ledger.balance(GUILD, MEMBER, [7])).available is None
    await policy.set_member_allowance(GUILD, ADMIN, MEMBER, None, None)  # removed: back to the role
    assert (await ledger.balance(GUILD, MEMBER, [7])).available == 80
    await policy.set_timezone(GUILD, ADMIN, "Asia/Seoul")
    actions = [entry.action for entry in await store.recent_audit(GUILD, 10)]
    assert actions == ["policy.update", "allowance.member", "allowance.member", "allowance.role", "policy.update"]


async def test_default_model_must_be_allowed(policy: PolicyService) -> None:
    await policy.set_model_allowed(GUILD, ADMIN, "gpt-image-1", False)
    with pytest.raises(ModelDisabledError):
        await policy.set_default_model(GUILD, ADMIN, "gpt-image-1")
    updated = await policy.set_default_model(GUILD, ADMIN, "stability-ai/sdxl")
    assert updated.default_model == "stability-ai/sdxl"


async def test_usage_and_csv_export(policy: PolicyService, ledger: Ledger, store: SqliteStore) -> None:
    job = make_job(
        id="a" * 32, guild_id=GUILD, user_id=MEMBER, model="stability-ai/sdxl", count=2, price=5, mode="async"
    )
    await ledger.hold_for_job(job, [])
    await store.update_job(job.id, status=JobStatus.SUBMITTING)
    await ledger.settle(job.id, JobStatus.DELIVERED, delivered_count=1)
    await ledger.grant(GUILD, MEMBER, 10, actor_id=ADMIN, reason='=HYPERLINK("x")')
    report = await policy.usage(GUILD)
    assert report.by_model == {"stability-ai/sdxl": 5} and report.top_members == [(MEMBER, 5)]
    data, rows = await policy.export_ledger(GUILD, "2026-11-25", "2026-11-25")
    table = list(csv.DictReader(io.StringIO(data.decode())))
    assert rows == len(table) == 4  # hold, capture, release, grant
    assert sorted(r["kind"] for r in table) == ["capture", "grant", "hold", "release"]
    grant = next(r for r in table if r["kind"] == "grant")
    assert grant["reason"].startswith("'="), "formulas are neutralised"
    empty, none = await policy.export_ledger(GUILD, "2026-11-26", "2026-11-30")
    assert none == 0 and empty.decode().count("\n") == 1
    with pytest.raises(InvalidValueError):
        await policy.export_ledger(GUILD, "2026-11-30", "2026-11-01")
    with pytest.raises(InvalidValueError):
        await policy.export_ledger(GUILD, "yesterday", "today")


async def test_the_default_model_cannot_be_disabled(policy: PolicyService) -> None:
    with pytest.raises(DefaultModelDisabledError):
        await policy.set_model_allowed(GUILD, ADMIN, "gemini-2.5-flash-image", False)  # the bot-wide default
    await policy.set_default_model(GUILD, ADMIN, "stability-ai/sdxl")
    with pytest.raises(DefaultModelDisabledError):
        await policy.set_model_allowed(GUILD, ADMIN, "stability-ai/sdxl", False)
    disabled = await policy.set_model_allowed(GUILD, ADMIN, "gemini-2.5-flash-image", False)
    assert not disabled.is_model_allowed("gemini-2.5-flash-image")
