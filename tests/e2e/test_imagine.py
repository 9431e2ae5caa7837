"""/imagine end to end: the real discord.py client against the fake Discord, the fake gateway behind it."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import parse_qs, urlparse

import discord
import pytest

from bot.errors import StartupError
from bot.store.records import EntryKind, JobStatus
from tests.e2e.harness import WAIT, World, status_line
from tests.fakes.fake_discord import CallbackType
from tests.fakes.fake_gateway import Reply, make_png


async def test_sync_model_delivers_pngs_with_progress_and_exact_charge(running: World) -> None:
    fi = await running.imagine("a lighthouse in a storm", model="gemini-2.5-flash-image", count=3, aspect_ratio="16:9")
    callback = await fi.wait_for_callback(WAIT)
    assert callback.type == CallbackType.DEFERRED_CHANNEL_MESSAGE and not callback.ephemeral
    message = await running.finished(fi)

    assert len(message.attachments) == 3 and all(a.is_png for a in message.attachments)
    shown = [e.get("image", {}).get("url", "") for e in message.embeds]
    assert [url.split("?")[0].rsplit("/", 1)[-1] for url in shown] == [a.filename for a in message.attachments]
    assert any(status_line(edit).startswith("Generating") for edit in fi.edits), "the clock runs while it generates"
    progress = [edit for edit in fi.edits if not edit.attachments]
    assert progress and fi.edits.index(progress[0]) < len(fi.edits) - 1, "progress edits came before the result"
    assert "Charged 117 credits · 383 left" in status_line(message)

    job = await running.job_of(fi)
    assert job.status == JobStatus.DELIVERED and job.charged == 117
    assert await running.ledger_of(job.id) == {EntryKind.HOLD: 117, EntryKind.CAPTURE: 117}
    (post,) = running.gw.posts
    assert post.json == {
        "model": "gemini-2.5-flash-image",
        "prompt": "a lighthouse in a storm",
        "aspect_ratio": "16:9",
        "number_of_images": 3,
    }
    assert post.headers["Authorization"] == f"Bearer {running.gw.api_key}"


async def test_async_model_is_polled_downloaded_and_delivered(running: World) -> None:
    running.gw.configure("xai/grok-imagine-image", completion_delay=0.6)
    fi = await running.imagine("a city of glass", model="xai/grok-imagine-image")
    message = await running.finished(fi)
    assert len(message.attachments) == 1 and message.attachments[0].is_png
    assert any(status_line(edit).startswith("Generating") for edit in fi.edits)
    job = await running.job_of(fi)
    assert job.operation_id and running.gw.polls_of(job.operation_id) >= 1
    assert await running.ledger_of(job.id) == {EntryKind.HOLD: 20, EntryKind.CAPTURE: 20}


async def test_the_reply_id_comes_from_the_acknowledgement_not_a_request_of_its_own(running: World) -> None:
    fi = await running.imagine("a quiet harbour", model="gemini-2.5-flash-image")
    message = await running.finished(fi)
    job = await running.job_of(fi)
    assert job.reply_message_id == message.id
    asked = [r for r in fi.requests if r.method == "GET" and r.route.startswith("/webhooks/")]
    assert asked == [], "the callback's answer names the reply: no GET of the message on the way to the start"


async def test_images_beyond_the_memory_budget_are_uploaded_from_disk(world: World) -> None:
    """With no memory budget every image waits in a temporary file; the member gets the exact bytes."""
    await world.start(image_memory_budget_bytes=0)
    world.gw.configure("xai/grok-imagine-image", completion_delay=0.1, image_size=(96, 96), noise=True)
    world.gw.configure("gemini-2.5-flash-image", image_size=(80, 80), noise=True)
    async_fi = await world.imagine("a spooled lighthouse", model="xai/grok-imagine-image")
    sync_fi = await world.imagine("a spooled harbour", model="gemini-2.5-flash-image", count=2)
    for fi, size in ((async_fi, (96, 96)), (sync_fi, (80, 80))):
        message = await world.finished(fi)
        assert message.attachments and all(a.is_png for a in message.attachments)
        expected = [make_png(*size, noise=True, seed=i) for i in range(len(message.attachments))]
        assert [a.data for a in message.attachments] == expected


async def test_delivered_images_leave_no_upload_stream_open(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The upload's request objects may outlive it (reference cycles until a full collection): every
    stream an upload read from is closed after it, so none keeps an in-memory image alive past its charge."""
    import cogs.presenter

    made: list[discord.File] = []
    make_file = cogs.presenter._upload_file

    def recording(source: object, filename: str) -> discord.File:
        file = make_file(source, filename)  # type: ignore[arg-type]
        made.append(file)
        return file

    monkeypatch.setattr(cogs.presenter, "_upload_file", recording)
    await world.start()
    world.gw.configure("xai/grok-imagine-image", completion_delay=0.1, image_size=(64, 64))
    first = await world.finished(await world.imagine("an open stream", model="xai/grok-imagine-image"))
    second = await world.finished(await world.imagine("two open streams", model="gemini-2.5-flash-image", count=2))
    assert len(first.attachments) == 1 and len(second.attachments) == 2 and len(made) == 3
    assert all(file.fp.closed for file in made)


async def test_more_sync_jobs_than_a_connection_pool_reach_the_gateway_together(world: World) -> None:
    """A sync model holds its POST open while it generates; 120 of them must all be at the gateway at once
    (aiohttp's default pool of 100 connections kept the rest waiting for a whole generation)."""
    jobs = 120
    await world.start(
        max_jobs_per_member=jobs,
        max_jobs_per_guild=jobs,
        max_jobs_global=jobs,
        max_queued_per_member=jobs,
        default_allowance=10**6,
    )
    release = asyncio.Event()
    world.gw.enqueue(Reply.held(release), method="POST", times=None)
    interactions = [await world.imagine(f"held {i}", model="gemini-2.5-flash-image") for i in range(jobs)]
    await world.fd.wait_for(lambda: len(world.gw.posts) >= jobs, timeout=WAIT, what=f"{jobs} POSTs at once")
    release.set()
    for fi in interactions:
        message = await fi.wait_for_message_state(lambda m: bool(m.attachments), WAIT)
        assert len(message.attachments) == 1


FAILURES = [
    ("401", Reply.error(401, "authentication_error - invalid key"), "image service key was rejected"),
    ("402", Reply.error(402, "insufficient credits"), "credits are used up"),
    ("403", Reply.error(403, "model not enabled"), "not enabled for this bot's image service account"),
    ("404", Reply.error(404, "unknown model"), "does not know the model"),
    ("422", Reply.validation(["body", "prompt"], "field required"), "rejected the request"),
    ("429", Reply.rate_limited(30), "busy right now"),
    ("500", Reply.error(500, "boom"), "provider had an error"),
    (
        "400",
        Reply.error(400, "prompt contains unsupported characters"),
        "rejected the request: prompt contains unsupported characters",
    ),
    ("503", Reply.error(503, "upstream unavailable"), "provider had an error"),
    ("malformed", Reply.malformed_json(), "not an image"),
    ("missing-fields", Reply.json({"id": "img-1", "created": 1}), "not an image"),
    ("content-policy", Reply.content_policy(), "content policy"),
]


@pytest.mark.parametrize(("label", "reply", "words"), FAILURES, ids=[f[0] for f in FAILURES])
async def test_each_gateway_failure_releases_the_hold_and_explains(
    running: World, label: str, reply: Reply, words: str
) -> None:
    running.gw.enqueue(reply, method="POST")
    fi = await running.imagine("a quiet forest", model="gemini-2.5-flash-image")
    message = await running.finished(fi)
    line = status_line(message)
    assert words in line and "refunded" in line
    assert "Traceback" not in line and "authentication_error" not in line
    job = await running.job_of(fi)
    assert job.status == JobStatus.FAILED
    assert await running.ledger_of(job.id) == {EntryKind.HOLD: 39, EntryKind.RELEASE: 39}


@pytest.mark.parametrize("payload", ["bad_base64", "not_image"])
async def test_bad_image_payload_releases_the_hold(running: World, payload: str) -> None:
    running.gw.configure("gemini-2.5-flash-image", payload=payload)
    fi = await running.imagine("a teapot", model="gemini-2.5-flash-image")
    message = await running.finished(fi)
    assert "not an image" in status_line(message)
    job = await running.job_of(fi)
    assert await running.ledger_of(job.id) == {EntryKind.HOLD: 39, EntryKind.RELEASE: 39}


async def test_download_failure_and_timeout_release_the_hold(world: World) -> None:
    await world.start(poll_deadline_seconds=1.0)
    world.gw.configure("black-forest-labs/flux-1.1-pro", completion_delay=0.1, result_missing=True)
    fi = await world.imagine("a red door", model="black-forest-labs/flux-1.1-pro")
    assert "could not be downloaded" in status_line(await world.finished(fi))
    world.gw.configure("xai/grok-imagine-image", completion_delay=60)
    slow = await world.imagine("a slow river", model="xai/grok-imagine-image")
    assert "took too long" in status_line(await world.finished(slow))
    for interaction, price in ((fi, 40), (slow, 20)):
        job = await world.job_of(interaction)
        assert await world.ledger_of(job.id) == {EntryKind.HOLD: price, EntryKind.RELEASE: price}


ASYNC_FAILURES = [
    (
        "failed-status",
        {"final_status": "failed", "failure_message": "GPU fell over"},
        {},
        "could not make this image: GPU fell over",
    ),
    (
        "too-large",
        {"result_bytes": b"\x89PNG" + b"\0" * 300_000},
        {"download_max_bytes": 100_000},
        "could not be downloaded",
    ),
    ("unknown-status", {"final_status": "melting"}, {"poll_deadline_seconds": 1.0}, "took too long"),
]


@pytest.mark.parametrize(
    ("label", "behaviour", "settings", "words"), ASYNC_FAILURES, ids=[f[0] for f in ASYNC_FAILURES]
)
async def test_async_failures_release_the_hold_and_explain(
    world: World, label: str, behaviour: dict[str, object], settings: dict[str, object], words: str
) -> None:
    await world.start(**settings)
    world.gw.configure("xai/grok-imagine-image", completion_delay=0.1, **behaviour)
    fi = await world.imagine("a glass bird", model="xai/grok-imagine-image")
    line = status_line(await world.finished(fi))
    assert words in line and "refunded" in line
    job = await world.job_of(fi)
    assert await world.ledger_of(job.id) == {EntryKind.HOLD: 20, EntryKind.RELEASE: 20}


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"model": "gpt-image-1", "aspect_ratio": "16:9"}, "does not take the option aspect_ratio"),
        ({"model": "gemini-2.5-flash-image", "count": 5}, "1 to 4 images"),
        ({"model": "runwayml/gen4-image", "size": "4K"}, "not a valid size"),
        ({"model": "dall-e-9"}, "There is no model called"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "x" * 1501}, "limit is 1,500"),
    ],
)
async def test_refused_request_gets_one_ephemeral_message_and_changes_nothing(
    running: World, options: dict[str, object], words: str
) -> None:
    prompt = str(options.pop("prompt", "a cat"))
    fi = await running.imagine(prompt, **options)
    callback = await fi.wait_for_callback(WAIT)
    assert callback.type == CallbackType.CHANNEL_MESSAGE and callback.ephemeral
    assert words in callback.data["content"]
    assert running.gw.posts == []
    assert await running.store.ledger_entries(fi.guild_id, 0, 1e12) == []
    assert await running.store.active_jobs() == []


async def test_twenty_concurrent_requests_at_the_edge_never_overspend(world: World) -> None:
    running = world
    await running.start(max_queued_per_member=20)  # only the credits may refuse here
    running.gw.configure("gemini-2.5-flash-image", sync_delay=0.3)
    # 500 credits buy 12 images at 39; twenty members' worth of requests arrive at once.
    interactions = await asyncio.gather(
        *(running.imagine(f"fox {i}", model="gemini-2.5-flash-image") for i in range(20))
    )
    await asyncio.gather(*(fi.wait_for_callback(WAIT) for fi in interactions))

    refused = [fi for fi in interactions if fi.callback.type == CallbackType.CHANNEL_MESSAGE]
    accepted = [fi for fi in interactions if fi.callback.type == CallbackType.DEFERRED_CHANNEL_MESSAGE]
    assert len(accepted) == 12 and len(refused) == 8
    for fi in refused:
        assert fi.callback.ephemeral and "This needs 39 credits and you have" in fi.callback.data["content"]
    delivered = [await running.finished(fi) for fi in accepted]
    assert all(len(message.attachments) == 1 for message in delivered)
    balance = await running.bot.services.ledger.balance(running.fd.guild.id, running.fd.alice.id, [])  # type: ignore[union-attr]
    assert balance.available == 500 - 12 * 39 and balance.held == 0
    assert len(running.gw.posts) == 12


async def test_everyone_in_a_prompt_pings_nobody(running: World) -> None:
    fi = await running.imagine("@everyone look at <@&123> and <@456>", model="gemini-2.5-flash-image")
    message = await running.finished(fi)
    users, roles, everyone = message.mentions
    assert (users, roles, everyone) == (set(), set(), False)
    for revision in fi.edits:
        allowed = revision.payload.get("allowed_mentions")
        assert allowed is not None and allowed.get("parse") == []


async def test_models_and_credits_commands(running: World) -> None:
    fi = await running.command("models list")
    embed = fi.callback.data["embeds"][0]  # type: ignore[union-attr]
    assert fi.callback.ephemeral  # type: ignore[union-attr]
    assert (
        "`stability-ai/sdxl` · Stability AI (Replicate) · 5 credits/image · queued · options: none"
        in embed["description"]
    )
    assert "`gpt-image-1-mini` · OpenAI · 8 credits/image · instant" in embed["description"]

    done = await running.imagine("a kite", model="gpt-image-1-mini")
    await running.finished(done)
    credits = await running.command("credits")
    fields = {f["name"]: f["value"] for f in credits.callback.data["embeds"][0]["fields"]}  # type: ignore[union-attr]
    assert fields["Available"] == "492" and fields["Held for running jobs"] == "0"
    assert "`gpt-image-1-mini` · 1 image(s) · delivered · 8 credits" in fields["Recent jobs"]


async def test_model_autocomplete_shows_prices_and_model_options(running: World) -> None:
    fi = await running.fd.send_autocomplete("imagine", {"prompt": "x", "model": "gpt"}, focused="model")
    choices = await fi.wait_for(lambda f: f.autocomplete_choices, WAIT)
    assert {"name": "gpt-image-1-mini · 8 credits/image", "value": "gpt-image-1-mini"} in choices
    assert all(c["value"].startswith("gpt") for c in choices)
    sizes = await running.fd.send_autocomplete(
        "imagine", {"prompt": "x", "model": "runwayml/gen4-image", "size": ""}, focused="size"
    )
    assert [c["value"] for c in await sizes.wait_for(lambda f: f.autocomplete_choices, WAIT)] == ["720p", "1080p"]


async def test_commands_sync_only_when_changed(world: World) -> None:
    await world.start()
    assert len(world.fd.command_syncs) == 1
    await world.stop()
    await world.start()
    assert len(world.fd.command_syncs) == 1, "same commands: no second sync"


async def test_start_up_logs_the_invite_url_with_the_needed_permissions(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.discord_app")
    await world.start()
    (line,) = [r.getMessage() for r in caplog.records if "invite the bot with" in r.getMessage()]
    query = parse_qs(urlparse(line.split(": ", 1)[1]).query)
    assert query["client_id"] == [str(world.fd.application_id)]
    assert set(query["scope"][0].split()) == {"bot", "applications.commands"}
    granted = discord.Permissions(int(query["permissions"][0]))
    assert granted.attach_files and granted.embed_links and granted.send_messages and granted.view_channel


async def test_secrets_never_reach_the_logs(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # everything, from every library, without the production redaction filter
    await world.start()
    done = await world.imagine("a harbour at night", model="gemini-2.5-flash-image")
    await world.finished(done)
    world.gw.enqueue(Reply.error(401, "authentication_error - invalid key"), method="POST")
    failed = await world.imagine("a harbour at noon", model="gemini-2.5-flash-image")
    await world.finished(failed)
    await world.stop()
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert len(caplog.records) > 20
    settings = world.settings()
    for secret in (settings.discord_token.get_secret_value(), settings.gateway_api_key.get_secret_value()):
        assert secret not in text


async def test_a_rejected_token_stops_start_up_with_one_clear_error(world: World) -> None:
    with pytest.raises(StartupError, match="Discord rejected DISCORD_TOKEN"):
        await world.start(discord_token="not-the-bot-token")
