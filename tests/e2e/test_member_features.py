"""Issue 13 end to end: remix, details, saved defaults, styles, channel rules, spoilers, AutoMod keyword rules,
the usage chart and the export of the current period. Real discord.py client, fake Discord, fake gateway."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from PIL import Image

from bot.store.records import EntryKind, JobRecord
from tests.e2e.harness import WAIT, World, status_line
from tests.fakes.fake_discord import CallbackType, FakeInteraction, FakeMessage, Perm

GEMINI, GEMINI_PRICE = "gemini-2.5-flash-image", 39
MINI, MINI_PRICE = "gpt-image-1-mini", 8


def button(message: FakeMessage, action: str) -> str:
    """The custom_id of a result button ("remix", "details", ...) on a message."""
    return next(cid for cid in message.custom_ids if cid.startswith(f"imagine:{action}:"))


def embed_fields(embed: dict[str, Any]) -> dict[str, str]:
    return {f["name"]: f["value"] for f in embed.get("fields", [])}


async def deliver(
    world: World, prompt: str, *, channel_id: int | None = None, **options: Any
) -> tuple[FakeMessage, JobRecord]:
    """Run /imagine (in the default channel unless told) to its result; the result message and the stored job."""
    fi = await world.fd.send_slash_command("imagine", {"prompt": prompt, **options}, channel_id=channel_id)
    assert (await fi.wait_for_callback(WAIT)).type == CallbackType.DEFERRED_CHANNEL_MESSAGE
    message = await world.finished(fi)
    assert message.attachments
    return message, await world.job_of(fi)


async def refused(fi: FakeInteraction) -> str:
    """The one ephemeral message a refused request gets."""
    callback = await fi.wait_for_callback(WAIT)
    assert callback.type == CallbackType.CHANNEL_MESSAGE and callback.ephemeral, callback
    return str(callback.data["content"])  # type: ignore[index]


async def nothing_held(world: World) -> None:
    """No job, no hold, no ledger line, nothing sent to the gateway."""
    guild_id = world.fd.guild.id  # type: ignore[union-attr]
    assert await world.store.active_jobs() == []
    assert await world.store.ledger_entries(guild_id, 0, 1e12) == []
    assert world.gw.posts == []


async def says(world: World, path: str, options: dict[str, Any] | None = None, *, user: Any = None) -> str:
    fi = await world.command(path, options, user=user or world.fd.admin)
    return str(fi.callback.data.get("content", ""))  # type: ignore[union-attr]


# --- remix ----------------------------------------------------------------------------------------------


async def test_remix_submits_the_edited_prompt_once_and_charges_once(running: World) -> None:
    fd = running.fd
    message, original = await deliver(running, "a lighthouse", model=GEMINI, aspect_ratio="1:1")

    opened = await fd.click_button(message, button(message, "remix"), user=fd.bob)
    callback = await opened.wait_for_callback(WAIT)
    assert callback.type == CallbackType.MODAL
    modal = opened.modal
    assert modal is not None
    defaults = {
        row["components"][0]["custom_id"]: row["components"][0].get("value")
        for row in modal["components"]
        if row["type"] == 1
    }
    assert defaults == {"prompt": "a lighthouse", "model": GEMINI, "count": "1", "options": "aspect_ratio=1:1"}

    edited = {"prompt": "a lighthouse at dawn", "options": "aspect_ratio=16:9", "count": "2"}
    submitted = await fd.submit_modal(opened, edited, user=fd.bob)
    assert (await submitted.wait_for_callback(WAIT)).type == CallbackType.DEFERRED_CHANNEL_MESSAGE
    result = await running.finished(submitted)
    remix = await running.job_of(submitted)

    assert [p.json["prompt"] for p in running.gw.posts] == ["a lighthouse", "a lighthouse at dawn"]
    assert running.gw.posts[1].json == {
        "model": GEMINI,
        "prompt": "a lighthouse at dawn",
        "aspect_ratio": "16:9",
        "number_of_images": 2,
    }
    assert remix.user_id == fd.bob.id and remix.remix_of == original.id  # type: ignore[union-attr]
    assert await running.ledger_of(remix.id) == {EntryKind.HOLD: 2 * GEMINI_PRICE, EntryKind.CAPTURE: 2 * GEMINI_PRICE}
    assert await running.ledger_of(original.id) == {EntryKind.HOLD: GEMINI_PRICE, EntryKind.CAPTURE: GEMINI_PRICE}
    link = f"https://discord.com/channels/{original.guild_id}/{original.channel_id}/{original.reply_message_id}"
    assert embed_fields(result.embeds[0])["Remixed from"] == link


async def test_remix_with_a_bad_option_line_is_refused_and_holds_nothing(running: World) -> None:
    fd = running.fd
    message, _ = await deliver(running, "a kite", model=GEMINI)
    opened = await fd.click_button(message, button(message, "remix"), user=fd.alice)
    await opened.wait_for_callback(WAIT)
    submitted = await fd.submit_modal(opened, {"options": "colour=blue"})
    assert "not a valid option line" in await refused(submitted)
    assert len(running.gw.posts) == 1 and await running.store.active_jobs() == []


# --- details and /job -----------------------------------------------------------------------------------


async def test_details_show_the_real_parameters_to_anyone(running: World) -> None:
    fd = running.fd
    message, job = await deliver(running, "a quiet harbour", model=MINI, quality="high", size="1024x1536")

    click = await fd.click_button(message, button(message, "details"), user=fd.bob)
    callback = await click.wait_for_callback(WAIT)
    assert callback.type == CallbackType.CHANNEL_MESSAGE and callback.ephemeral
    (embed,) = callback.data["embeds"]  # type: ignore[index]
    shown = embed_fields(embed)
    assert shown["Prompt"] == "a quiet harbour"
    assert shown["Model"] == f"`{MINI}`"
    assert shown["Options"] == "quality: high\nsize: 1024x1536"
    assert shown["Images"] == "1 of 1 delivered"
    assert shown["Credits charged"] == f"{MINI_PRICE} of {MINI_PRICE} held ({MINI_PRICE} per image)"
    assert shown["Asked by"] == f"<@{fd.alice.id}>"  # type: ignore[union-attr]
    assert shown["When"] == f"<t:{int(job.created_at)}:f>"
    assert shown["Took"].endswith(" s") and shown["Job id"] == f"`{job.id}`"

    by_id = await running.command("job", {"id": job.id}, user=fd.bob)
    assert by_id.callback is not None and by_id.callback.ephemeral
    assert embed_fields(by_id.callback.data["embeds"][0]) == shown  # type: ignore[index]

    unknown = await running.command("job", {"id": "0" * 32}, user=fd.bob)
    assert "no longer exists" in unknown.callback.data["content"]  # type: ignore[union-attr]


async def test_job_shows_only_this_servers_jobs(world: World) -> None:
    other = world.fd.add_guild("elsewhere")
    other.add_channel("lobby")
    insider = other.add_member("carol")
    await world.start(dev_guild_id=None)  # global commands: both servers have /job
    _, job = await deliver(world, "a secret garden", model=GEMINI)
    here = await world.command("job", {"id": job.id}, user=world.fd.bob)
    assert here.callback is not None and here.callback.data.get("embeds")  # type: ignore[union-attr]
    there = await world.command("job", {"id": job.id}, user=insider, guild_id=other.id)
    assert "no longer exists" in there.callback.data["content"]  # type: ignore[union-attr]


# --- saved defaults ---------------------------------------------------------------------------------------


async def test_saved_defaults_are_used_and_an_explicit_option_wins(running: World) -> None:
    await says(running, "settings save", {"model": MINI, "aspect_ratio": "16:9"}, user=running.fd.alice)
    saved = await says(
        running, "settings save", {"model": GEMINI, "count": 2, "quality": "high"}, user=running.fd.alice
    )  # one save adds to the last: the aspect ratio stays, the model is replaced
    assert saved.startswith("Saved.") and "aspect_ratio: `16:9`" in saved and MINI not in saved

    await deliver(running, "a cat")  # everything from the defaults
    await deliver(running, "a dog", model=MINI)  # quality applies; aspect ratio and count 2 do not: dropped
    await deliver(running, "a bird", aspect_ratio="1:1", count=1)  # explicit options win
    assert [p.json for p in running.gw.posts] == [
        {"model": GEMINI, "prompt": "a cat", "aspect_ratio": "16:9", "number_of_images": 2},
        {"model": MINI, "prompt": "a dog", "quality": "high"},
        {"model": GEMINI, "prompt": "a bird", "aspect_ratio": "1:1", "number_of_images": 1},
    ]

    shown = await says(running, "settings show", user=running.fd.alice)
    assert f"model: `{GEMINI}`" in shown and "count: `2`" in shown
    assert await says(running, "settings show", user=running.fd.bob) == (
        "You have no saved defaults. Save some with `/settings save`."
    )
    await says(running, "settings reset", user=running.fd.alice)
    await deliver(running, "a fish")
    assert running.gw.posts[-1].json == {"model": GEMINI, "prompt": "a fish", "number_of_images": 1}


async def test_saving_an_unknown_value_is_refused_and_saves_nothing(running: World) -> None:
    answer = await says(running, "settings save", {"quality": "ultra"}, user=running.fd.alice)
    assert "`ultra` is not a valid quality" in answer
    guild_id = running.fd.guild.id  # type: ignore[union-attr]
    assert await running.store.member_defaults(guild_id, running.fd.alice.id) == {}  # type: ignore[union-attr]


# --- styles -----------------------------------------------------------------------------------------------


async def test_a_styles_template_reaches_the_gateway_with_the_members_text(running: World) -> None:
    fd = running.fd
    added = await says(running, "styles add", {"name": "Noir", "template": "{prompt}, film noir, high contrast"})
    assert added.startswith("Style `noir`")
    bad = await says(running, "styles add", {"name": "plain", "template": "no placeholder"})
    assert "{prompt}" in bad and [s.name for s in await running.store.styles(fd.guild.id)] == ["noir"]  # type: ignore[union-attr]

    typed = await fd.send_autocomplete("imagine", {"prompt": "x", "style": "no"}, "style")
    await typed.wait_for_callback(WAIT)
    assert [c["value"] for c in typed.autocomplete_choices or []] == ["noir"]

    message, job = await deliver(running, "a detective in the rain", model=GEMINI, style="noir")
    assert running.gw.posts[-1].json["prompt"] == "a detective in the rain, film noir, high contrast"
    assert job.style == "noir"
    assert embed_fields(message.embeds[0])["Style"] == "`noir`"
    click = await fd.click_button(message, button(message, "details"), user=fd.bob)
    details = embed_fields((await click.wait_for_callback(WAIT)).data["embeds"][0])  # type: ignore[index]
    assert details["Style"] == "`noir`"
    assert details["Prompt sent (with the style)"] == "a detective in the rain, film noir, high contrast"


async def test_the_blocklist_checks_the_prompt_with_the_style(running: World) -> None:
    await says(running, "styles add", {"name": "gore", "template": "{prompt}, covered in blood"})
    await says(running, "blocklist add", {"pattern": "blood"})
    assert "words this server does not allow" in await refused(await running.imagine("a rose", style="gore"))
    assert "no style called `nope`" in await refused(await running.imagine("a rose", style="nope"))
    await nothing_held(running)


# --- channel rules ----------------------------------------------------------------------------------------


async def test_imagine_outside_the_channel_rules_is_refused_with_nothing_held(world: World) -> None:
    art = world.fd.guild.add_channel("art")  # type: ignore[union-attr]
    await world.start()
    assert (await says(world, "server channels list")).startswith("Images can be made in every channel")
    assert "is now one of the channels" in await says(world, "server channels add", {"channel": art})

    answer = await refused(await world.imagine("a mural", model=GEMINI))
    assert answer == f"Images can be made here only in: <#{art.id}>. Nothing was charged."
    await nothing_held(world)

    message, _ = await deliver(world, "a mural", model=GEMINI, channel_id=art.id)
    assert message.channel_id == art.id
    await says(world, "server channels remove", {"channel": art})
    await deliver(world, "a mural in general", model=GEMINI)  # no channel chosen: everywhere again


async def test_reroll_outside_the_channel_rules_is_refused(world: World) -> None:
    art = world.fd.guild.add_channel("art")  # type: ignore[union-attr]
    await world.start()
    message, _ = await deliver(world, "a vase", model=GEMINI)  # made before the rule
    await says(world, "server channels add", {"channel": art})
    reroll = await world.fd.click_button(message, button(message, "reroll"), user=world.fd.alice)
    assert "only in: <#" in await refused(reroll)
    assert len(world.gw.posts) == 1 and await world.store.active_jobs() == []


# --- spoilers ---------------------------------------------------------------------------------------------


async def test_a_spoiler_results_attachments_carry_the_spoiler_flag(world: World) -> None:
    nsfw = world.fd.guild.add_channel("after-dark", nsfw=True)  # type: ignore[union-attr]
    await world.start()
    asked, job = await deliver(world, "a plot twist", model=GEMINI, count=2, spoiler=True)
    assert job.spoiler and len(asked.attachments) == 2
    assert all(a.is_spoiler for a in asked.attachments)
    assert not any("image" in e for e in asked.embeds), "an embed would show the image unblurred"

    plain, _ = await deliver(world, "a sunny day", model=GEMINI)
    assert not any(a.is_spoiler for a in plain.attachments)

    assert "outside age-restricted" in await says(world, "server spoilers", {"mode": "outside_nsfw"})
    outside, _ = await deliver(world, "a sunny day again", model=GEMINI)
    inside, _ = await deliver(world, "a night scene", model=GEMINI, channel_id=nsfw.id)
    assert all(a.is_spoiler for a in outside.attachments)
    assert not any(a.is_spoiler for a in inside.attachments)
    await says(world, "server spoilers", {"mode": "all"})
    everywhere, _ = await deliver(world, "another night", model=GEMINI, channel_id=nsfw.id)
    assert all(a.is_spoiler for a in everywhere.attachments)


# --- AutoMod ----------------------------------------------------------------------------------------------


async def test_a_prompt_matching_an_automod_keyword_rule_is_refused_with_nothing_held(world: World) -> None:
    guild = world.fd.guild
    assert guild is not None
    guild.add_automod_rule("No dragons", keyword_filter=["dragon*"], allow_list=["dragonfly"])
    guild.add_automod_rule("Bad words", regex_patterns=[r"b[a@]d\s?w[o0]rd"])
    guild.add_automod_rule("Switched off", keyword_filter=["kitten"], enabled=False)
    await world.start()

    assert "AutoMod rule “No dragons”" in await refused(await world.imagine("a Dragonfruit tree"))
    assert "AutoMod rule “Bad words”" in await refused(await world.imagine("a b@d w0rd on a wall"))
    await nothing_held(world)
    await deliver(world, "a dragonfly over a pond", model=GEMINI)  # the allow list
    await deliver(world, "a kitten", model=GEMINI)  # a disabled rule does not apply
    assert "applied to prompts (2 keyword rule(s))" in await says(world, "server show")


async def test_without_manage_server_automod_is_skipped_and_server_show_says_so(world: World) -> None:
    guild = world.fd.guild
    assert guild is not None
    guild.add_automod_rule("No dragons", keyword_filter=["dragon"])
    bot_role = next(r for r in guild.roles.values() if r.tags and r.tags.get("bot_id"))
    bot_role.permissions &= ~(Perm.MANAGE_GUILD | Perm.ADMINISTRATOR)
    await world.start()
    await deliver(world, "a dragon", model=GEMINI)
    assert "not applied: the bot needs the Manage Server permission" in await says(world, "server show")


# --- usage chart and export -----------------------------------------------------------------------------


async def usage_chart(world: World) -> bytes:
    fi = await world.command("usage server", user=world.fd.admin)
    message = await fi.wait_for_message_state(lambda m: not m.loading and m.attachments, WAIT)
    (chart,) = message.attachments
    shown = message.embeds[0]["image"]["url"].split("?")[0].rsplit("/", 1)[-1]
    assert chart.filename == "usage.png" and shown == "usage.png", "the embed shows the chart"
    return chart.data


async def test_the_usage_chart_is_a_png_that_changes_with_the_data(running: World, tmp_path: Path) -> None:
    empty = await usage_chart(running)
    await deliver(running, "a hill", model=GEMINI, count=3)
    await deliver(running, "a dale", model=MINI)
    await says(running, "budget set", {"amount": 400, "period": "month"})
    spent = await usage_chart(running)

    for data in (empty, spent):
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and image.size == (800, 450)
    assert len(spent) != len(empty), "the file size follows the data"
    with Image.open(io.BytesIO(empty)) as a, Image.open(io.BytesIO(spent)) as b:
        before, after = a.convert("RGB").tobytes(), b.convert("RGB").tobytes()
    differing = sum(1 for p, q in zip(before, after, strict=True) if p != q)
    assert differing > 3000, "bars, the running total and the budget line were drawn"
    path = tmp_path / "usage-chart.png"
    path.write_bytes(spent)
    print(f"usage chart written to {path}")


async def test_export_without_dates_has_this_periods_rows(running: World) -> None:
    _, job = await deliver(running, "a harbour", model=GEMINI)
    first, today = await running.bot.services.policy.current_period_days(running.fd.guild.id)  # type: ignore[union-attr]
    fi = await running.command("usage export", {}, user=running.fd.admin)
    message = await fi.wait_for_message_state(lambda m: not m.loading and m.attachments, WAIT)
    (upload,) = message.attachments
    assert upload.filename == f"ledger-{first}-{today}.csv" and first.endswith("-01")
    rows = list(csv.DictReader(io.StringIO(upload.data.decode("utf-8"))))
    assert [(r["kind"], r["amount"], r["job_id"]) for r in rows] == [
        ("hold", str(GEMINI_PRICE), job.id),
        ("capture", str(GEMINI_PRICE), job.id),
    ]


# --- honest waiting times -------------------------------------------------------------------------------


async def test_queued_shows_an_estimated_start_and_generating_the_expected_end(world: World) -> None:
    model = "xai/grok-imagine-image"
    await world.start(max_jobs_per_member=1)
    for _ in range(5):  # the model's learned durations: 4 s each
        await world.store.record_duration(model, 4.0, now=1.0)
    world.gw.configure(model, completion_delay=2.0)
    first = await world.imagine("a slow sunrise", model=model)
    second = await world.imagine("a slow sunset", model=model)
    await world.finished(first)
    await world.finished(second)
    job1, job2 = await world.job_of(first), await world.job_of(second)

    queued = [status_line(e) for e in second.edits if status_line(e).startswith("Queued: position 1 · starts about")]
    assert queued, [status_line(e) for e in second.edits]
    estimate = int(queued[0].rsplit("<t:", 1)[1].split(":")[0])
    assert job1.started_at is not None and abs(estimate - (job1.started_at + 4.0)) <= 5.0, "first job's start + 4 s"

    generating = [status_line(e) for e in first.edits if "done about <t:" in status_line(e)]
    assert generating, [status_line(e) for e in first.edits]
    ends = int(generating[0].rsplit("<t:", 1)[1].split(":")[0])
    assert job1.submitted_at is not None and ends == int(job1.submitted_at + 4.0)
    assert job2.id != job1.id
