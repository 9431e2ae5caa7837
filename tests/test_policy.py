"""Admin changes through the core: validated before writing, audited, and reflected in credits."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime

import pytest

from bot.credits.ledger import Ledger
from bot.credits.policy import PolicyService
from bot.errors import (
    BlocklistFullError,
    DefaultModelDisabledError,
    InvalidAmountError,
    InvalidValueError,
    ModelDisabledError,
    UnknownModelError,
)
from bot.generation.catalog import Catalog
from bot.store.base import Store
from bot.store.records import Allowance, JobStatus
from tests.factories import make_job

GUILD, ADMIN, MEMBER = 1, 900, 100
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture
def ledger(store: Store) -> Ledger:
    return Ledger(store, default_allowance=Allowance(500, "month"), clock=lambda: NOW)


@pytest.fixture
def policy(store: Store, ledger: Ledger) -> PolicyService:
    return PolicyService(store, ledger, Catalog.load(), bot_default_model="gemini-2.5-flash-image", clock=lambda: NOW)


@pytest.mark.parametrize("amount", [-1, 1_000_001, None, True])
async def test_bad_amounts_are_refused_and_nothing_is_written(
    policy: PolicyService, store: Store, amount: object
) -> None:
    with pytest.raises(InvalidAmountError):
        await policy.set_default_allowance(GUILD, ADMIN, amount, "month")  # type: ignore[arg-type]
    with pytest.raises(InvalidAmountError):
        await policy.set_member_allowance(GUILD, ADMIN, MEMBER, amount, "day")  # type: ignore[arg-type]
    assert await store.recent_audit(GUILD, 10) == []
    assert (await store.get_policy(GUILD)).default_allowance is None


async def test_bad_period_timezone_and_model_are_refused(policy: PolicyService, store: Store) -> None:
    with pytest.raises(InvalidValueError):
        await policy.set_budget(GUILD, ADMIN, 100, "fortnight")
    with pytest.raises(InvalidValueError):
        await policy.set_timezone(GUILD, ADMIN, "Mars/Olympus_Mons")
    with pytest.raises(UnknownModelError):
        await policy.set_model_allowed(GUILD, ADMIN, "dall-e-9", False)
    with pytest.raises(InvalidValueError):
        await policy.add_blocked_term(GUILD, ADMIN, "(unclosed", True)
    assert await store.recent_audit(GUILD, 10) == []


async def test_changes_are_audited_and_take_effect(policy: PolicyService, ledger: Ledger, store: Store) -> None:
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


async def test_usage_and_csv_export(policy: PolicyService, ledger: Ledger, store: Store) -> None:
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


async def test_a_full_blocklist_refuses_more_terms_and_writes_nothing(store: Store, ledger: Ledger) -> None:
    capped = PolicyService(
        store,
        ledger,
        Catalog.load(),
        bot_default_model="gemini-2.5-flash-image",
        blocklist_max_terms=3,
        clock=lambda: NOW,
    )
    # Five admins at once at the edge: the count and the insert are one statement, so only three get in.
    results = await asyncio.gather(
        *(capped.add_blocked_term(GUILD, ADMIN, f"word{i}", False) for i in range(5)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, BlocklistFullError)]
    assert len(refused) == 2 and refused[0].params == {"limit": 3}
    assert len(await store.blocked_terms(GUILD)) == 3
    version = await store.blocklist_version(GUILD)
    with pytest.raises(BlocklistFullError):
        await capped.add_blocked_term(GUILD, ADMIN, "one more", False)
    assert len(await store.recent_audit(GUILD, 10)) == 3
    assert await store.blocklist_version(GUILD) == version, "a refused add changes nothing"
    await capped.add_blocked_term(GUILD + 1, ADMIN, "elsewhere", False)  # the cap is per server
    term = (await store.blocked_terms(GUILD))[0]
    assert await capped.remove_blocked_term(GUILD, ADMIN, term.id)
    assert (await capped.add_blocked_term(GUILD, ADMIN, "room again", False)).pattern == "room again"


async def test_server_language_is_stored_audited_and_validated(policy: PolicyService, store: Store) -> None:
    assert (await store.get_policy(GUILD)).language == "auto"
    with pytest.raises(InvalidValueError):
        await policy.set_language(GUILD, ADMIN, "klingon")
    assert await store.recent_audit(GUILD, 10) == []
    assert (await policy.set_language(GUILD, ADMIN, "ko")).language == "ko"
    assert (await store.get_policy(GUILD)).language == "ko"
    (entry,) = await store.recent_audit(GUILD, 10)
    assert entry.action == "policy.update" and entry.detail == {"language": "ko"}


async def test_csv_headers_follow_the_admins_language(policy: PolicyService) -> None:
    english, _ = await policy.export_ledger(GUILD, "2026-11-01", "2026-11-30", "en-US")
    korean, _ = await policy.export_ledger(GUILD, "2026-11-01", "2026-11-30", "ko")
    assert english.decode().splitlines()[0] == "id,time_utc,user_id,kind,amount,job_id,model,actor_id,reason"
    assert korean.decode().splitlines()[0] == "번호,시각_UTC,사용자_ID,종류,크레딧,작업_ID,모델,처리자_ID,사유"


async def test_two_admins_at_once_never_leave_the_default_model_disabled(
    policy: PolicyService, store: Store
) -> None:
    # One admin makes gpt-image-1 the default while another disables it: one of them must be refused.
    results = await asyncio.gather(
        policy.set_default_model(GUILD, ADMIN, "gpt-image-1"),
        policy.set_model_allowed(GUILD, ADMIN + 1, "gpt-image-1", False),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, (ModelDisabledError, DefaultModelDisabledError))]
    assert len(refused) == 1, results
    final = await store.get_policy(GUILD)
    default = final.default_model or "gemini-2.5-flash-image"
    assert final.is_model_allowed(default), f"{default} is the default and disabled"
