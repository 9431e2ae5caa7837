"""Admin commands end to end: the real bot against the fake Discord, asserting on what Discord received
(callback type, ephemeral flag, content, embeds, the CSV's bytes) and on what the store holds."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.store.records import Allowance, EntryKind, GuildPolicy, JobRecord
from tests.e2e.harness import WAIT, World
from tests.fakes.fake_discord import Callback, CallbackType, FakeDiscord, FakeMember, FakeMessage

MISSING_PERMISSION = "You need the Manage Server permission to do that."
NOT_A_MEMBER = "That user is not a member of this server."
GEMINI, MINI = "gemini-2.5-flash-image", "gpt-image-1-mini"  # 39 and 8 credits per image

# Every admin command with options that would change something if the caller were allowed to.
ADMIN_COMMANDS: dict[str, Callable[[FakeDiscord], dict[str, Any]]] = {
    "quota default": lambda fd: {"amount": 10, "period": "day"},
    "quota set": lambda fd: {"member": fd.bob, "amount": 10},
    "quota role": lambda fd: {"role": fd.guild.everyone, "amount": 10},  # type: ignore[union-attr]
    "quota grant": lambda fd: {"member": fd.bob, "amount": 10, "reason": "gift"},
    "quota deduct": lambda fd: {"member": fd.bob, "amount": 10, "reason": "fine"},
    "quota show": lambda fd: {"member": fd.bob},
    "budget set": lambda fd: {"amount": 10, "period": "day"},
    "budget show": lambda fd: {},
    "usage server": lambda fd: {},
    "usage member": lambda fd: {"member": fd.bob},
    "usage export": lambda fd: {"start": "2026-01-01", "end": "2026-01-31"},
    "audit": lambda fd: {},
    "server timezone": lambda fd: {"name": "Asia/Seoul"},
    "server quote": lambda fd: {"threshold": 10},
    "server language": lambda fd: {"language": "ko"},
    "server logchannel": lambda fd: {"channel": fd.channel},
    "blocklist add": lambda fd: {"pattern": "dragon"},
    "blocklist remove": lambda fd: {"term_id": 1},
    "blocklist list": lambda fd: {},
    "models enable": lambda fd: {"model": "gpt-image-1"},
    "models disable": lambda fd: {"model": "gpt-image-1"},
    "models default": lambda fd: {"model": "gpt-image-1"},
    "server show": lambda fd: {},
    "server spoilers": lambda fd: {"mode": "all"},
    "server channels add": lambda fd: {"channel": fd.channel},
    "server channels remove": lambda fd: {"channel": fd.channel},
    "server channels list": lambda fd: {},
    "styles add": lambda fd: {"name": "noir", "template": "{prompt}, film noir"},
    "styles remove": lambda fd: {"name": "noir"},
    "styles list": lambda fd: {},
}


# --- helpers ----------------------------------------------------------------------------------------------


def people(world: World) -> tuple[FakeMember, FakeMember, FakeMember]:
    """The default guild's admin (Manage Server) and its plain members alice and bob."""
    fd = world.fd
    return fd.admin, fd.alice, fd.bob  # type: ignore[return-value]


def guild_id(world: World) -> int:
    assert world.fd.guild is not None
    return world.fd.guild.id


async def answer(world: World, path: str, options: dict[str, Any] | None = None, *, user: Any = None) -> Callback:
    """Run a command (as the admin unless told) and return its one ephemeral message callback."""
    fi = await world.command(path, options, user=user or world.fd.admin)
    callback = fi.callback
    assert callback is not None and callback.type == CallbackType.CHANNEL_MESSAGE, fi
    assert callback.ephemeral and callback.data is not None
    assert callback.data["allowed_mentions"] == {"parse": []}, "an admin answer never pings anyone"
    return callback


async def says(world: World, path: str, options: dict[str, Any] | None = None, *, user: Any = None) -> str:
    """The content of a command's ephemeral answer."""
    return str((await answer(world, path, options, user=user)).data["content"])  # type: ignore[index]


async def exported(world: World, options: dict[str, str]) -> tuple[str, str, bytes]:
    """Run /usage export as the admin: (message, file name, CSV bytes). It defers (ephemerally) first."""
    fi = await world.command("usage export", options, user=world.fd.admin)
    assert fi.callback is not None and fi.callback.type == CallbackType.DEFERRED_CHANNEL_MESSAGE
    assert fi.callback.ephemeral
    message = await fi.wait_for_message_state(lambda m: not m.loading and m.attachments, WAIT)
    assert message.ephemeral
    (upload,) = message.attachments
    return message.content, upload.filename, upload.data


async def usage_report(world: World) -> FakeMessage:
    """Run /usage server as the admin: it defers (ephemerally), then sends the report with its chart."""
    fi = await world.command("usage server", user=world.fd.admin)
    assert fi.callback is not None and fi.callback.type == CallbackType.DEFERRED_CHANNEL_MESSAGE
    assert fi.callback.ephemeral
    message = await fi.wait_for_message_state(lambda m: not m.loading and m.attachments, WAIT)
    assert message.ephemeral
    return message


def fields(callback: Callback) -> dict[str, str]:
    """The first embed's fields by name."""
    (embed,) = callback.data["embeds"]  # type: ignore[index]
    return {f["name"]: f["value"] for f in embed["fields"]}


async def available(world: World, user: Any) -> str:
    """What /credits shows a member as "Available"."""
    fi = await world.command("credits", user=user)
    assert fi.callback is not None
    return fields(fi.callback)["Available"]


async def deliver(world: World, prompt: str, *, user: Any = None, **options: Any) -> JobRecord:
    """Run /imagine to the end and return the delivered job."""
    fi = await world.imagine(prompt, user=user, **options)
    callback = await fi.wait_for_callback(WAIT)
    assert callback.type == CallbackType.DEFERRED_CHANNEL_MESSAGE, callback
    assert (await world.finished(fi)).attachments
    return await world.job_of(fi)


async def refused_imagine(world: World, prompt: str, *, user: Any = None, **options: Any) -> str:
    """Run /imagine expecting a refusal: one ephemeral message and no gateway call."""
    posts = len(world.gw.posts)
    fi = await world.imagine(prompt, user=user, **options)
    callback = await fi.wait_for_callback(WAIT)
    assert callback.type == CallbackType.CHANNEL_MESSAGE and callback.ephemeral, callback
    assert len(world.gw.posts) == posts, "nothing reached the gateway"
    return str(callback.data["content"])  # type: ignore[index]


async def ledger(world: World) -> list[tuple[EntryKind, int, int]]:
    """The whole ledger of the guild as (kind, user, amount)."""
    return [(e.kind, e.user_id, e.amount) for e in await world.store.ledger_entries(guild_id(world), 0, 1e12)]


async def audit_actions(world: World) -> list[str]:
    """The audit log's actions, oldest first."""
    return [e.action for e in reversed(await world.store.recent_audit(guild_id(world), 100))]


async def assert_nothing_written(world: World) -> None:
    store, gid = world.store, guild_id(world)
    assert await store.recent_audit(gid, 100) == []
    assert await store.get_policy(gid) == GuildPolicy(guild_id=gid)
    assert await store.role_allowances(gid) == {}
    assert await store.member_allowance(gid, people(world)[2].id) is None
    assert await store.blocked_terms(gid) == []
    assert await ledger(world) == []


def export_range() -> dict[str, str]:
    """A date range around today (UTC) for /usage export: wide enough that midnight cannot split a test."""
    today = datetime.now(UTC).date()
    return {"start": (today - timedelta(days=1)).isoformat(), "end": (today + timedelta(days=1)).isoformat()}


def parse_csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


# --- who may run admin commands ---------------------------------------------------------------------------


async def test_every_admin_command_is_covered_and_hinted_as_manage_server(running: World) -> None:
    synced = {c["name"]: c for c in running.fd.commands_for(guild_id(running))}
    paths = set()
    for name in ("quota", "budget", "usage", "server", "blocklist", "audit", "models", "styles"):
        command = synced[name]
        if name != "models":  # /models list is for everyone, so only its admin subcommands are checked
            assert int(command["default_member_permissions"]) == 32, f"/{name} hints Manage Server"
        subs = [o["name"] for o in command.get("options", []) if o["type"] == 1]
        groups = [o for o in command.get("options", []) if o["type"] == 2]
        paths |= {f"{name} {sub}" for sub in subs} if subs or groups else {name}
        paths |= {f"{name} {g['name']} {o['name']}" for g in groups for o in g.get("options", [])}
    assert paths - {"models list"} == set(ADMIN_COMMANDS)


@pytest.mark.parametrize("path", list(ADMIN_COMMANDS))
async def test_non_admin_is_refused_and_nothing_is_written(running: World, path: str) -> None:
    _, alice, _ = people(running)
    content = await says(running, path, ADMIN_COMMANDS[path](running.fd), user=alice)
    assert content == MISSING_PERMISSION
    await assert_nothing_written(running)


async def test_missing_permission_names_it_as_discord_does(running: World) -> None:
    _, alice, _ = people(running)
    assert await says(running, "budget show", user=alice) == MISSING_PERMISSION


async def test_member_permission_from_the_interaction_decides(running: World) -> None:
    _, alice, _ = people(running)
    # Discord sends the member's permissions with the interaction; the check reads those, not the role cache.
    fi = await running.command("budget show", user=alice, member_permissions=1 << 5)
    assert fi.callback is not None and fi.callback.data["content"].startswith("Budget: ")  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "options"),
    [
        ("quota grant", {"amount": 10, "reason": "gift"}),
        ("quota deduct", {"amount": 10, "reason": "fine"}),
        ("quota set", {"amount": 10}),
        ("quota show", {}),
        ("usage member", {}),
    ],
)
async def test_member_outside_the_server_is_refused(running: World, path: str, options: dict[str, Any]) -> None:
    stranger = running.fd.add_user("stranger")
    assert await says(running, path, {"member": stranger, **options}) == NOT_A_MEMBER
    await assert_nothing_written(running)


# --- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "options"),
    [
        ("quota grant", {"amount": 0, "reason": "nothing"}),
        ("quota grant", {"amount": 1_000_001, "reason": "too much"}),
        ("quota default", {"amount": -1, "period": "day"}),
        ("quota default", {"amount": 5, "period": "fortnight"}),
        ("budget set", {"amount": 1.5, "period": "day"}),
        ("server quote", {"threshold": -5}),
        ("blocklist add", {"pattern": "x" * 201}),
    ],
)
async def test_discord_enforces_the_synced_ranges_and_choices(
    running: World, path: str, options: dict[str, Any]
) -> None:
    admin, _, bob = people(running)
    if path == "quota grant":
        options = {"member": bob, **options}
    with pytest.raises(ValueError):
        await running.fd.send_slash_command(path, options, user=admin)


@pytest.mark.parametrize(
    ("path", "options", "words"),
    [
        ("server timezone", {"name": "Mars/Olympus_Mons"}, "`Mars/Olympus_Mons` is not a valid timezone"),
        ("blocklist add", {"pattern": "(unclosed", "regex": True}, "a regular expression RE2 accepts"),
        ("blocklist add", {"pattern": "   "}, "is not a valid pattern: use 1–200 characters"),
        ("usage export", {"start": "2026-13-01", "end": "2026-12-31"}, "is not a valid date: use YYYY-MM-DD"),
        ("usage export", {"start": "2026-02-01", "end": "2026-01-01"}, "start on or before the end"),
        ("usage export", {"start": "2025-01-01", "end": "2026-01-02"}, "at most 366 days"),
        ("models disable", {"model": "dall-e-9"}, "There is no model called `dall-e-9`"),
        ("models default", {"model": "dall-e-9"}, "There is no model called `dall-e-9`"),
    ],
)
async def test_values_the_core_refuses_are_explained_and_nothing_is_written(
    running: World, path: str, options: dict[str, Any], words: str
) -> None:
    content = await says(running, path, options)
    assert words in content and "Traceback" not in content
    await assert_nothing_written(running)


async def test_quota_set_and_role_need_an_amount_unless_unlimited_or_removing(running: World) -> None:
    _, _, bob = people(running)
    everyone = running.fd.guild.everyone  # type: ignore[union-attr]
    missing = "`(none)` is not a valid amount: use a whole number from 0 to 1,000,000."
    assert await says(running, "quota set", {"member": bob}) == missing, "not a silent 0 per month"
    assert await says(running, "quota role", {"role": everyone, "period": "day"}) == missing
    await assert_nothing_written(running)
    assert await says(running, "quota set", {"member": bob, "period": "unlimited"}) == (
        f"<@{bob.id}>'s own allowance: unlimited."
    )
    assert await available(running, bob) == "unlimited"


# --- /quota -------------------------------------------------------------------------------------------------


async def test_quota_default_is_the_allowance_imagine_uses(running: World) -> None:
    _, alice, bob = people(running)
    assert await says(running, "quota default", {"amount": 50, "period": "day"}) == (
        "Every member's default allowance is now 50 per day."
    )
    assert (await running.store.get_policy(guild_id(running))).default_allowance == Allowance(50, "day")
    assert await available(running, alice) == "50"

    await deliver(running, "a fox", model=GEMINI)
    assert await refused_imagine(running, "another fox", model=GEMINI) == (
        "This needs 39 credits and you have 11 available. Nothing was charged."
    )
    assert await available(running, alice) == "11"
    assert await available(running, bob) == "50", "an allowance is per member"
    assert await audit_actions(running) == ["policy.update"]


async def test_quota_role_gives_the_most_generous_role(world: World) -> None:
    _, alice, bob = people(world)
    fd = world.fd
    assert fd.guild is not None
    helpers, patrons = fd.guild.add_role("Helpers"), fd.guild.add_role("Patrons")
    alice.roles += [helpers.id, patrons.id]
    await world.start()

    assert await says(world, "quota role", {"role": helpers, "amount": 100, "period": "month"}) == (
        f"Allowance for <@&{helpers.id}>: 100 per month."
    )
    await says(world, "quota role", {"role": patrons, "amount": 300, "period": "month"})
    assert await world.store.role_allowances(fd.guild.id) == {
        helpers.id: Allowance(100, "month"),
        patrons.id: Allowance(300, "month"),
    }
    assert await available(world, alice) == "300"
    assert await available(world, bob) == "500", "no role: the bot's default"
    shown = fields(await answer(world, "quota show", {"member": alice}))
    assert shown["Allowance"] == "300 per month" and shown["Available"] == "300"

    assert await says(world, "quota role", {"role": patrons, "remove": True}) == (
        f"Allowance for <@&{patrons.id}>: not set."
    )
    assert await available(world, alice) == "100"
    assert await audit_actions(world) == ["allowance.role"] * 3


async def test_quota_set_overrides_roles_and_the_default(running: World) -> None:
    _, alice, bob = people(running)
    gid = guild_id(running)
    await says(running, "quota default", {"amount": 50, "period": "day"})
    assert await says(running, "quota set", {"member": alice, "amount": 5, "period": "day"}) == (
        f"<@{alice.id}>'s own allowance: 5 per day."
    )
    assert await running.store.member_allowance(gid, alice.id) == Allowance(5, "day")
    assert await available(running, alice) == "5"
    assert (
        await refused_imagine(running, "a kite", model=MINI)
        == "This needs 8 credits and you have 5 available. Nothing was charged."
    )
    assert await available(running, bob) == "50"

    await says(running, "quota set", {"member": alice, "remove": True})
    assert await running.store.member_allowance(gid, alice.id) is None
    assert await available(running, alice) == "50"
    assert await ledger(running) == []


async def test_quota_grant_raises_available_and_is_audited_and_exported(running: World) -> None:
    admin, alice, _ = people(running)
    granted = await answer(running, "quota grant", {"member": alice, "amount": 25, "reason": "contest winner"})
    embed = granted.data["embeds"][0]  # type: ignore[index]
    assert embed["title"] == "Alice"
    assert embed["description"] == f"Granted 25 credits to <@{alice.id}> for this period."
    assert fields(granted)["Available"] == "525" and fields(granted)["Granted this period"] == "25"
    assert await available(running, alice) == "525"
    assert await ledger(running) == [(EntryKind.GRANT, alice.id, 25)]

    audit = await says(running, "audit")
    assert f"<@{admin.id}> `ledger.grant`" in audit and '"reason": "contest winner"' in audit

    content, _, data = await exported(running, export_range())
    assert content == "The ledger: 1 entries."
    (row,) = parse_csv(data)
    assert {k: row[k] for k in ("user_id", "kind", "amount", "actor_id", "reason", "job_id")} == {
        "user_id": str(alice.id),
        "kind": "grant",
        "amount": "25",
        "actor_id": str(admin.id),
        "reason": "contest winner",
        "job_id": "",
    }


async def test_quota_deduct_lowers_available(running: World) -> None:
    _, alice, _ = people(running)
    deducted = await answer(running, "quota deduct", {"member": alice, "amount": 100, "reason": "refund abuse"})
    assert deducted.data["embeds"][0]["description"] == (  # type: ignore[index]
        f"Deducted 100 credits from <@{alice.id}> for this period."
    )
    assert fields(deducted)["Available"] == "400" and fields(deducted)["Granted this period"] == "-100"
    assert await available(running, alice) == "400"
    assert await ledger(running) == [(EntryKind.DEDUCT, alice.id, 100)]
    assert await audit_actions(running) == ["ledger.deduct"]


async def test_quota_show_reports_allowance_spend_and_holds(running: World) -> None:
    _, alice, _ = people(running)
    await deliver(running, "a lamp", model=GEMINI)
    shown = await answer(running, "quota show", {"member": alice})
    assert shown.data["embeds"][0]["title"] == "Alice"  # type: ignore[index]
    values = fields(shown)
    assert values["Allowance"] == "500 per month"
    assert (values["Available"], values["Held for running jobs"], values["Spent this period"]) == ("461", "0", "39")
    assert values["Granted this period"] == "0" and values["Resets"].startswith("<t:")
    assert await running.store.recent_audit(guild_id(running), 10) == [], "reading writes nothing"


# --- /budget ------------------------------------------------------------------------------------------------


async def test_budget_edge_refuses_imagine_and_spends_nothing(running: World) -> None:
    _, alice, bob = people(running)
    assert await says(running, "budget set", {"amount": 50, "period": "month"}) == "Server budget: 50 per month."
    assert (await running.store.get_policy(guild_id(running))).budget == Allowance(50, "month")
    first = await deliver(running, "a bridge", model=GEMINI)

    content = await refused_imagine(running, "another bridge", user=bob, model=GEMINI)
    assert (
        content == "This server has reached its image budget for now (11 credits left, 39 needed). Nothing was charged."
    )
    assert await ledger(running) == [(EntryKind.HOLD, alice.id, 39), (EntryKind.CAPTURE, alice.id, 39)]
    assert await running.ledger_of(first.id) == {EntryKind.HOLD: 39, EntryKind.CAPTURE: 39}
    assert await running.store.active_jobs() == []

    shown = await says(running, "budget show")
    assert shown.startswith("Budget: 50 per month · spent 39 · remaining 11 · resets <t:")
    await deliver(running, "a small bridge", user=bob, model=MINI)  # 8 fits under the 11 left


async def test_budget_unlimited_removes_the_cap(running: World) -> None:
    await says(running, "budget set", {"amount": 10, "period": "day"})
    assert await says(running, "budget set", {"amount": 0, "period": "unlimited"}) == "Server budget: not set."
    assert (await running.store.get_policy(guild_id(running))).budget is None
    assert await says(running, "budget show") == "Budget: not set · spent 0 · remaining unlimited · resets —"
    await deliver(running, "a tower", model=GEMINI)
    assert (await says(running, "budget show")).startswith("Budget: not set · spent 39 · ")
    assert await audit_actions(running) == ["policy.update", "policy.update"]


# --- /models ------------------------------------------------------------------------------------------------


async def model_choices(world: World, typed: str) -> list[str]:
    fi = await world.fd.send_autocomplete("imagine", {"prompt": "x", "model": typed}, focused="model")
    return [c["value"] for c in await fi.wait_for(lambda f: f.autocomplete_choices, WAIT) or []]


async def models_line(world: World, model: str) -> str:
    embed = (await answer(world, "models list", user=people(world)[1])).data["embeds"][0]  # type: ignore[index]
    return next(line for line in embed["description"].splitlines() if line.startswith(f"`{model}` "))


async def test_models_disable_and_enable(running: World) -> None:
    gid = guild_id(running)
    assert await says(running, "models disable", {"model": "gpt-image-1"}) == "`gpt-image-1` is refused on this server."
    assert (await running.store.get_policy(gid)).model_rules == {"gpt-image-1": False}

    assert await refused_imagine(running, "a cat", model="gpt-image-1") == (
        "The model `gpt-image-1` is not allowed on this server."
    )
    assert await ledger(running) == []
    assert (await models_line(running, "gpt-image-1")).endswith("(disabled here)")
    assert not (await models_line(running, MINI)).endswith("(disabled here)")
    choices = await model_choices(running, "gpt")
    assert "gpt-image-1" not in choices and MINI in choices
    assert await says(running, "models default", {"model": "gpt-image-1"}) == (
        "The model `gpt-image-1` is not allowed on this server."
    ), "a disabled model cannot become the default"

    assert await says(running, "models enable", {"model": "gpt-image-1"}) == "`gpt-image-1` is allowed on this server."
    assert (await running.store.get_policy(gid)).model_rules == {"gpt-image-1": True}
    assert "gpt-image-1" in await model_choices(running, "gpt")
    assert "(disabled here)" not in await models_line(running, "gpt-image-1")
    job = await deliver(running, "a cat", model="gpt-image-1")
    assert running.gw.posts[-1].json["model"] == "gpt-image-1" and job.charged == 42
    assert await audit_actions(running) == ["policy.model_rule", "policy.model_rule"]


async def test_models_default_is_what_imagine_uses_without_a_model(running: World) -> None:
    assert await says(running, "models default", {"model": MINI}) == f"The default model is now `{MINI}`."
    assert (await running.store.get_policy(guild_id(running))).default_model == MINI
    assert (await models_line(running, MINI)).endswith("(default)")
    assert not (await models_line(running, GEMINI)).endswith("(default)")

    job = await deliver(running, "a boat")
    (post,) = running.gw.posts
    assert post.json["model"] == MINI
    assert await running.ledger_of(job.id) == {EntryKind.HOLD: 8, EntryKind.CAPTURE: 8}


# --- /usage -------------------------------------------------------------------------------------------------


async def test_usage_server_and_member_show_spend_by_model_and_top_members(running: World) -> None:
    admin, alice, bob = people(running)
    await deliver(running, "a hill", model=GEMINI)
    await deliver(running, "a hill, smaller", model=MINI)
    await deliver(running, "a dale", user=bob, model=MINI)

    message = await usage_report(running)
    (embed,) = message.embeds
    assert embed["title"] == "Spent this period: 55 credits"
    assert embed["description"].startswith("Since <t:") and ":D> · resets <t:" in embed["description"]
    assert {f["name"]: f["value"] for f in embed["fields"]} == {
        "By model": f"`{GEMINI}` · 39\n`{MINI}` · 16",
        "Top members": f"<@{alice.id}> · 47\n<@{bob.id}> · 8",
    }

    lines = (await says(running, "usage member", {"member": alice})).splitlines()
    assert lines[0].startswith(f"<@{alice.id}> spent 47 credits since <t:")
    assert lines[1:] == [f"`{GEMINI}` · 39", f"`{MINI}` · 8"]
    assert (await says(running, "usage member", {"member": admin})).splitlines()[1:] == ["—"]


async def test_usage_export_is_a_csv_of_the_ledger_for_the_range(running: World) -> None:
    _, alice, _ = people(running)
    job = await deliver(running, "a harbour", model=GEMINI)
    await says(running, "quota grant", {"member": alice, "amount": 7, "reason": "=HYPERLINK(evil)"})

    content, filename, data = await exported(running, export_range())
    assert content == "The ledger: 3 entries."
    range_ = export_range()
    assert filename == f"ledger-{range_['start']}-{range_['end']}.csv"
    assert data.startswith(b"id,time_utc,user_id,kind,amount,job_id,model,actor_id,reason\r\n")

    rows = parse_csv(data)
    assert [(r["kind"], r["amount"], r["job_id"], r["model"]) for r in rows] == [
        ("hold", "39", job.id, GEMINI),
        ("capture", "39", job.id, GEMINI),
        ("grant", "7", "", ""),
    ]
    assert all(datetime.fromisoformat(r["time_utc"]).utcoffset() == timedelta(0) for r in rows)
    assert rows[2]["reason"] == "'=HYPERLINK(evil)", "a formula is neutralised for spreadsheets"

    content, _, data = await exported(running, {"start": "2020-01-01", "end": "2020-01-31"})
    assert content == "The ledger: 0 entries." and parse_csv(data) == []


# --- /server ------------------------------------------------------------------------------------------------


async def test_server_timezone_is_set_and_autocompleted(running: World) -> None:
    admin, _, _ = people(running)
    choices = await running.fd.send_autocomplete("server timezone", {"name": "seoul"}, focused="name", user=admin)
    assert [c["value"] for c in await choices.wait_for(lambda f: f.autocomplete_choices, WAIT) or []] == ["Asia/Seoul"]
    assert await says(running, "server timezone", {"name": "Asia/Seoul"}) == (
        "Periods now reset at midnight in Asia/Seoul."
    )
    assert (await running.store.get_policy(guild_id(running))).timezone == "Asia/Seoul"
    (entry,) = await running.store.recent_audit(guild_id(running), 10)
    assert (entry.action, entry.detail) == ("policy.update", {"timezone": "Asia/Seoul"})


async def test_server_quote_makes_imagine_ask_before_spending(running: World) -> None:
    _, alice, _ = people(running)
    fd = running.fd
    assert await says(running, "server quote", {"threshold": 30}) == (
        "Requests above 30 credits now ask for confirmation (0: never)."
    )
    assert (await running.store.get_policy(guild_id(running))).quote_threshold == 30

    fi = await running.imagine("a castle", model=GEMINI)
    callback = await fi.wait_for_callback(WAIT)
    assert callback.type == CallbackType.CHANNEL_MESSAGE and callback.ephemeral
    assert callback.data["content"].startswith("This costs **39 credits** (1 × 39 for")  # type: ignore[index]
    buttons = [c for row in callback.data["components"] for c in row["components"]]  # type: ignore[index]
    assert [b["label"] for b in buttons] == ["Confirm", "Cancel"]
    assert running.gw.posts == [] and await ledger(running) == []

    cancel = await fd.click_button(fi, buttons[1]["custom_id"], user=alice)
    await cancel.wait_for_callback(WAIT)
    assert fi.message is not None and fi.message.content == "Cancelled. Nothing was charged."
    assert running.gw.posts == [] and await ledger(running) == []
    await deliver(running, "a cottage", model=MINI)  # 8 credits: under the threshold, no quote


# --- /blocklist ---------------------------------------------------------------------------------------------


async def test_blocklist_add_list_remove_and_refusal(running: World) -> None:
    assert await says(running, "blocklist add", {"pattern": "dragon"}) == "Blocked term #1: `dragon`."
    assert await says(running, "blocklist add", {"pattern": r"castle\d+", "regex": True}) == (
        r"Blocked term #2: `castle\d+`."
    )
    assert await says(running, "blocklist list") == "`1` `dragon`\n`2` regex `castle\\d+`"

    blocked = "Your prompt contains words this server does not allow. Nothing was charged."
    assert await refused_imagine(running, "a red DRAGON", model=MINI) == blocked
    assert await refused_imagine(running, "castle42 at dusk", model=MINI) == blocked
    assert await ledger(running) == [] and await running.store.active_jobs() == []
    await deliver(running, "a dragonfly", model=MINI)  # whole words only

    assert await says(running, "blocklist remove", {"term_id": 1}) == "Removed blocked term #1."
    assert await says(running, "blocklist remove", {"term_id": 1}) == "There is no blocked term #1."
    assert await says(running, "blocklist list") == "`2` regex `castle\\d+`"
    await deliver(running, "a red dragon", model=MINI)
    assert await audit_actions(running) == ["blocked_term.add", "blocked_term.add", "blocked_term.remove"]
    assert await says(running, "blocklist remove", {"term_id": 2}) == "Removed blocked term #2."
    assert await says(running, "blocklist list") == "No blocked terms."


async def test_blocklist_add_beyond_the_cap_is_refused_clearly(world: World) -> None:
    await world.start(blocklist_max_terms=2)
    assert await says(world, "blocklist add", {"pattern": "dragon"}) == "Blocked term #1: `dragon`."
    assert await says(world, "blocklist add", {"pattern": "castle"}) == "Blocked term #2: `castle`."
    assert await says(world, "blocklist add", {"pattern": "moat"}) == (
        "This server already has 2 blocked terms, the most it can have. Remove one with `/blocklist remove` "
        "before adding another."
    )
    assert await says(world, "blocklist list") == "`1` `dragon`\n`2` `castle`"
    assert await audit_actions(world) == ["blocked_term.add", "blocked_term.add"]


# --- /audit -------------------------------------------------------------------------------------------------


async def test_audit_lists_the_changes_newest_first(running: World) -> None:
    admin, _, bob = people(running)
    assert await says(running, "audit") == "No admin changes yet."
    await says(running, "quota default", {"amount": 50, "period": "week"})
    await says(running, "budget set", {"amount": 1000, "period": "month"})
    await says(running, "quota set", {"member": bob, "amount": 10, "period": "day"})
    await says(running, "quota grant", {"member": bob, "amount": 5, "reason": "welcome"})
    await says(running, "models disable", {"model": "stability-ai/sdxl"})
    await says(running, "blocklist add", {"pattern": "gore"})

    lines = (await says(running, "audit")).splitlines()
    expected = [
        "blocked_term.add",
        "policy.model_rule",
        "ledger.grant",
        "allowance.member",
        "policy.update",
        "policy.update",
    ]
    assert [line.split("`")[1] for line in lines] == expected
    assert all(line.startswith("<t:") and f"<@{admin.id}> `" in line for line in lines)
    assert '"budget": {"amount": 1000, "period": "month"}' in lines[4]
    assert '"default_allowance": {"amount": 50, "period": "week"}' in lines[5]
    assert f'"user_id": {bob.id}' in lines[3]
    assert await audit_actions(running) == list(reversed(expected))
