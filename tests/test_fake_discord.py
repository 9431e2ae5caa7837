"""The fake Discord works with the real discord.py client: commands, edits, files, buttons, faults, resume."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import discord
import pytest
from discord import app_commands
from discord.ext import commands
from PIL import Image

from tests.fakes.fake_discord import (
    DEFAULT_UPLOAD_LIMIT,
    CallbackType,
    ErrorCode,
    FakeDiscord,
    MessageFlag,
    Perm,
)

STYLES = [f"style {n:02d}" for n in range(30)] + ["oil painting", "pixel art", "watercolour"]


def png_bytes(colour: str, size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


class Probe:
    """What the bot saw, for assertions on the client side, and gates the test opens for the bot."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[Any]] = {}

    def _future(self, key: str) -> asyncio.Future[Any]:
        if key not in self._futures:
            self._futures[key] = asyncio.get_running_loop().create_future()
        return self._futures[key]

    def set(self, key: str, value: Any = True) -> None:
        future = self._future(key)
        if not future.done():
            future.set_result(value)

    def reset(self) -> None:
        self._futures.clear()

    async def get(self, key: str, timeout: float = 10) -> Any:
        return await asyncio.wait_for(asyncio.shield(self._future(key)), timeout)


def make_result_view(probe: Probe) -> discord.ui.View:
    class ResultView(discord.ui.View):
        def __init__(self) -> None:
            super().__init__(timeout=None)

        @discord.ui.button(label="Reroll", custom_id="imagine:reroll", style=discord.ButtonStyle.primary)
        async def reroll(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
            probe.set("reroll_by", interaction.user.id)
            await interaction.response.send_message("Rerolling…", ephemeral=True)

    return ResultView()


def make_bot(probe: Probe) -> commands.Bot:
    bot = commands.Bot(command_prefix=commands.when_mentioned, intents=discord.Intents.default())

    @bot.event
    async def setup_hook() -> None:  # a persistent view, as after a restart
        bot.add_view(make_result_view(probe))

    @app_commands.command(name="imagine", description="Draw a picture from a prompt")
    @app_commands.describe(prompt="What to draw", steps="Sampling steps", size="Image size", style="Style")
    async def imagine(
        interaction: discord.Interaction,
        prompt: str,
        steps: app_commands.Range[int, 1, 50] = 20,
        size: Literal["1024x1024", "1792x1024"] = "1024x1024",
        style: str | None = None,
    ) -> None:
        probe.set("imagine_args", (prompt, steps, size, style, interaction.filesize_limit))
        await interaction.response.defer(thinking=True)
        await interaction.edit_original_response(content="Queued…")
        await interaction.edit_original_response(content="Generating… 50%")
        files = [
            discord.File(io.BytesIO(png_bytes("red")), "image_1.png"),
            discord.File(io.BytesIO(png_bytes("blue")), "image_2.png"),
        ]
        embed = discord.Embed(title=prompt).set_image(url="attachment://image_1.png")
        message = await interaction.edit_original_response(
            content=f"{interaction.user.mention} asked for: {prompt} @everyone",
            embed=embed,
            attachments=files,
            allowed_mentions=discord.AllowedMentions.none(),
            view=make_result_view(probe),
        )
        probe.set("imagine_message", message)

    @imagine.autocomplete("style")
    async def style_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=s, value=s) for s in STYLES if current.lower() in s][:25]

    @app_commands.command(name="slow", description="Defers, then edits when the test says so")
    async def slow(interaction: discord.Interaction) -> None:
        response = await interaction.response.defer(thinking=True)
        await probe.get("release")
        try:
            await interaction.edit_original_response(content="finally")
        except discord.HTTPException as exc:
            probe.set("slow_error", exc)
            # Fall back to the bot token: the response message can still be edited through the channel.
            assert response.message_id is not None and interaction.channel is not None
            await interaction.channel.get_partial_message(response.message_id).edit(content="finally (channel)")

    class FeedbackModal(discord.ui.Modal, title="Feedback"):
        text = discord.ui.TextInput(label="Your feedback", custom_id="feedback:text")

        async def on_submit(self, interaction: discord.Interaction) -> None:
            probe.set("feedback", self.text.value)
            await interaction.response.send_message("thanks", ephemeral=True)

    @app_commands.command(name="feedback", description="Opens a modal")
    async def feedback(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(FeedbackModal())

    @app_commands.command(name="upload", description="Sends a file of the given size")
    async def upload(interaction: discord.Interaction, size: int) -> None:
        probe.set("upload_limit", interaction.filesize_limit)
        await interaction.response.defer(thinking=True)
        try:
            await interaction.followup.send(file=discord.File(io.BytesIO(b"\0" * size), "blob.bin"))
        except discord.HTTPException as exc:
            probe.set("upload_error", exc)
        else:
            probe.set("upload_error", None)

    @app_commands.command(name="ping", description="Pong")
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("pong")

    @app_commands.command(name="announce", description="Posts in the channel with the bot token")
    async def announce(interaction: discord.Interaction, text: str) -> None:
        probe.set("announce_perms", interaction.app_permissions)
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await interaction.channel.send(text, allowed_mentions=discord.AllowedMentions.none())  # type: ignore[union-attr]
        except discord.HTTPException as exc:
            probe.set("announce_error", exc)
        else:
            probe.set("announce_error", None)
        await interaction.edit_original_response(content="done")

    for command in (imagine, slow, upload, ping, announce, feedback):
        bot.tree.add_command(command)
    return bot


@pytest.fixture
async def fd() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake
        assert fake.unknown_requests == []


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
async def bot(fd: FakeDiscord, probe: Probe) -> AsyncIterator[commands.Bot]:
    client = make_bot(probe)
    async with fd.running(client):
        await client.tree.sync()
        yield client


async def run_imagine(fd: FakeDiscord, **options: Any):
    fi = await fd.send_slash_command("imagine", {"prompt": "a red fox", **options})
    await fi.wait_for_edit(lambda edit: edit.attachments)
    return fi


async def test_login_ready_and_sync_are_recorded(fd: FakeDiscord, bot: commands.Bot) -> None:
    assert [c.guild_id for c in fd.command_syncs] == [None]
    synced = {c["name"] for c in fd.command_syncs[0].commands}
    assert synced == {"imagine", "slow", "upload", "ping", "announce", "feedback"}
    assert fd.requests_to(r"^GET /users/@me$") and fd.requests_to(r"^GET /oauth2/applications/@me$")
    connection = fd.gateway_connections[0]
    assert connection.query["v"] == "10" and connection.query["encoding"] == "json"

    guild = bot.get_guild(fd.guild.id)
    assert guild is not None and guild.me is not None
    assert guild.filesize_limit == DEFAULT_UPLOAD_LIMIT
    channel = guild.get_channel(fd.channel.id)
    assert isinstance(channel, discord.TextChannel)
    perms = channel.permissions_for(guild.me)
    assert perms.send_messages and perms.attach_files and perms.embed_links and not perms.administrator
    # Without the members intent only the bot's member comes with GUILD_CREATE; the rest is fetched.
    assert [m.id for m in guild.members] == [fd.bot_user.id]
    admin = await guild.fetch_member(fd.admin.id)
    assert admin.guild_permissions.manage_guild
    assert not (await guild.fetch_member(fd.alice.id)).guild_permissions.manage_guild
    assert bot.application_id == fd.application_id


async def test_slash_command_defers_edits_and_uploads_pngs(fd: FakeDiscord, bot: commands.Bot, probe: Probe) -> None:
    fi = await fd.send_slash_command(
        "imagine", {"prompt": "a red fox", "steps": "30", "size": "1792x1024", "style": "oil painting"}
    )
    callback = await fi.wait_for_callback()
    assert callback.type == CallbackType.DEFERRED_CHANNEL_MESSAGE
    final = await fi.wait_for_edit(lambda edit: len(edit.attachments) == 2)

    # Client side: typed options and the payload's upload limit.
    assert await probe.get("imagine_args") == ("a red fox", 30, "1792x1024", "oil painting", DEFAULT_UPLOAD_LIMIT)
    assert fi.payload["data"]["options"][1] == {"name": "steps", "type": 4, "value": 30}

    # Over the wire: the callback came first, then the edits in order.
    assert fi.requests[0].route == "/interactions/{interaction_id}/{token}/callback"
    assert [e.content for e in fi.edits][:2] == ["Queued…", "Generating… 50%"]
    assert fi.edits[-1] is final and len(fi.edits) == 3
    assert all(r.status == 200 for r in fi.requests)

    assert [a.filename for a in final.attachments] == ["image_1.png", "image_2.png"]
    assert all(a.is_png and a.content_type == "image/png" for a in final.attachments)
    assert (final.attachments[0].width, final.attachments[0].height) == (8, 6)
    assert final.payload["allowed_mentions"]["parse"] == []
    assert final.embeds[0]["image"]["url"] == final.attachments[0].url
    assert final.custom_ids == ["imagine:reroll"]

    # What the member sees now: no longer "thinking", nobody pinged.
    message = fi.message
    assert message is not None and not message.loading and not message.ephemeral
    assert message.mentions == (set(), set(), False)
    assert len(message.history) == 4

    # The bot's InteractionMessage was built from the fake's answer, and the CDN serves the bytes.
    returned = await probe.get("imagine_message")
    assert [a.filename for a in returned.attachments] == ["image_1.png", "image_2.png"]
    assert await returned.attachments[1].read() == final.attachments[1].data


async def test_autocomplete_answers_at_most_25_choices(fd: FakeDiscord, bot: commands.Bot) -> None:
    fi = await fd.send_autocomplete("imagine", {"prompt": "x", "style": "pix"}, focused="style")
    callback = await fi.wait_for_callback()
    assert callback.type == CallbackType.AUTOCOMPLETE_RESULT
    assert fi.autocomplete_choices == [{"name": "pixel art", "value": "pixel art"}]

    everything = await fd.send_autocomplete("imagine", {"style": ""}, focused="style")
    await everything.wait_for_callback()
    assert len(everything.autocomplete_choices or []) == 25


async def test_button_click_reaches_the_view(fd: FakeDiscord, bot: commands.Bot, probe: Probe) -> None:
    fi = await run_imagine(fd)
    click = await fd.click_button(fi.message, "imagine:reroll", user=fd.bob)
    callback = await click.wait_for_callback()
    assert callback.type == CallbackType.CHANNEL_MESSAGE and callback.ephemeral
    assert await probe.get("reroll_by") == fd.bob.id
    assert click.message is not None and click.message.content == "Rerolling…" and click.message.ephemeral
    assert click.payload["message"]["id"] == str(fi.message.id)


async def test_expired_token_gives_50027_on_the_client(fd: FakeDiscord, bot: commands.Bot, probe: Probe) -> None:
    fi = await fd.send_slash_command("slow")
    await fi.wait_for_callback()
    fi.expire()
    probe.set("release")
    error = await probe.get("slow_error")
    assert isinstance(error, discord.HTTPException)
    assert (error.status, error.code) == (401, ErrorCode.INVALID_WEBHOOK_TOKEN)
    assert [r.status for r in fi.requests] == [200, 401]
    fallback = await fi.wait_for_edit()
    assert fallback.route == "/channels/{channel_id}/messages/{message_id}"
    assert fi.message.content == "finally (channel)" and not fi.message.loading


async def test_modal_round_trip(fd: FakeDiscord, bot: commands.Bot, probe: Probe) -> None:
    opened = await fd.send_slash_command("feedback")
    assert (await opened.wait_for_callback()).type == CallbackType.MODAL
    assert opened.modal is not None and opened.modal["title"] == "Feedback"
    submitted = await fd.submit_modal(opened, {"feedback:text": "lovely"})
    assert (await submitted.wait_for_callback()).ephemeral
    assert await probe.get("feedback") == "lovely"


async def test_file_over_the_limit_gives_413(fd: FakeDiscord, bot: commands.Bot, probe: Probe) -> None:
    fi = await fd.send_slash_command("upload", {"size": 2048}, attachment_size_limit=1024)
    error = await probe.get("upload_error")
    assert await probe.get("upload_limit") == 1024 == fi.attachment_size_limit
    assert isinstance(error, discord.HTTPException)
    assert (error.status, error.code) == (413, ErrorCode.REQUEST_TOO_LARGE)


async def test_first_followup_after_defer_replaces_the_thinking_message(fd: FakeDiscord, bot: commands.Bot) -> None:
    fi = await fd.send_slash_command("upload", {"size": 512})
    followup = await fi.wait_for_followup()
    assert followup is fi.message and not followup.loading
    assert followup.attachments[0].size == 512 and followup.attachments[0].filename == "blob.bin"


async def test_gateway_disconnect_resumes_and_interactions_still_work(fd: FakeDiscord, bot: commands.Bot) -> None:
    resumed = asyncio.get_running_loop().create_future()

    async def on_resumed() -> None:
        if not resumed.done():
            resumed.set_result(True)

    bot.add_listener(on_resumed)

    await fd.disconnect_gateway(code=4000)
    await asyncio.wait_for(resumed, 10)
    assert (fd.identify_count, fd.resume_count) == (1, 1)
    assert fd.gateway_connections[-1].path == "/gateway-resume"

    fi = await fd.send_slash_command("ping")
    callback = await fi.wait_for_callback()
    assert callback.type == CallbackType.CHANNEL_MESSAGE and callback.data["content"] == "pong"

    # An interaction dispatched while the socket is down is replayed on RESUME.
    await fd.disconnect_gateway(wait_for_resume=False)
    missed = await fd.send_slash_command("ping")
    assert (await missed.wait_for_callback()).data["content"] == "pong"
    await fd.wait_for_resume(2)


async def test_rate_limited_edit_is_retried(fd: FakeDiscord, bot: commands.Bot) -> None:
    fault = fd.rate_limit_next(r"^PATCH /webhooks/.*/messages/@original$")
    fi = await run_imagine(fd)
    assert fault.hits == 1
    assert [r.status for r in fi.requests if r.method == "PATCH"] == [429, 200, 200, 200]
    assert [e.content for e in fi.edits][:2] == ["Queued…", "Generating… 50%"]


async def test_channel_sends_follow_permissions_and_faults(fd: FakeDiscord, bot: commands.Bot, probe: Probe) -> None:
    fi = await fd.send_slash_command("announce", {"text": "hello <@&1> @everyone"})
    sent = await fd.wait_for_message(fd.channel.id, lambda m: m.content.startswith("hello"))
    assert await probe.get("announce_error") is None
    assert sent.mentions == (set(), set(), False) and sent.interaction is None
    await fi.wait_for_edit(lambda e: e.content == "done")
    assert fi.message.ephemeral

    bot_role = next(r for r in fd.guild.roles.values() if r.managed)
    fd.channel.set_permissions(bot_role, deny=Perm.SEND_MESSAGES)
    probe.reset()
    denied = await fd.send_slash_command("announce", {"text": "again"})
    error = await probe.get("announce_error")
    assert isinstance(error, discord.Forbidden) and error.code == ErrorCode.MISSING_PERMISSIONS
    assert not (await probe.get("announce_perms")).send_messages
    await denied.wait_for_edit()

    fd.channel.overwrites.clear()
    fd.fail_channel_sends(fd.channel.id, times=1)
    probe.reset()
    await fd.send_slash_command("announce", {"text": "third"})
    error = await probe.get("announce_error")
    assert isinstance(error, discord.Forbidden) and error.code == ErrorCode.MISSING_PERMISSIONS
    assert await probe.get("announce_perms") == discord.Permissions(Perm.ALL & ~Perm.ADMINISTRATOR)


async def test_guild_sync_and_option_checks(fd: FakeDiscord, bot: commands.Bot) -> None:
    guild = discord.Object(fd.guild.id)
    bot.tree.copy_global_to(guild=guild)
    await bot.tree.sync(guild=guild)
    assert [c.guild_id for c in fd.command_syncs] == [None, fd.guild.id]

    fi = await fd.send_slash_command("ping")
    assert fi.payload["data"]["guild_id"] == str(fd.guild.id)
    assert (await fi.wait_for_callback()).type == CallbackType.CHANNEL_MESSAGE

    with pytest.raises(ValueError, match="choices"):
        await fd.send_slash_command("imagine", {"prompt": "x", "size": "huge"})
    with pytest.raises(ValueError, match="requires"):
        await fd.send_slash_command("imagine", {"steps": 3})
    with pytest.raises(ValueError, match="max_value"):
        await fd.send_slash_command("imagine", {"prompt": "x", "steps": 51})


async def test_persistent_button_works_after_a_restart(fd: FakeDiscord) -> None:
    first_probe = Probe()
    first = make_bot(first_probe)
    async with fd.running(first):
        await first.tree.sync()
        fi = await run_imagine(fd)

    second_probe = Probe()
    second = make_bot(second_probe)
    async with fd.running(second):
        click = await fd.click_button(fi.message, "imagine:reroll", user=fd.admin)
        await click.wait_for_callback()
        assert await second_probe.get("reroll_by") == fd.admin.id
    assert fd.identify_count == 2 and len(fd.command_syncs) == 1


async def test_unknown_routes_are_recorded(fd: FakeDiscord, bot: commands.Bot) -> None:
    with pytest.raises(discord.NotFound):
        await bot.http.request(discord.http.Route("GET", "/nothing/here"))
    assert [r.path for r in fd.unknown_requests] == ["/nothing/here"]
    fd.unknown_requests.clear()


async def test_deferred_ephemeral_flag_is_kept(fd: FakeDiscord, bot: commands.Bot) -> None:
    fi = await fd.send_slash_command("announce", {"text": "x"})
    callback = await fi.wait_for_callback()
    assert callback.type == CallbackType.DEFERRED_CHANNEL_MESSAGE
    assert callback.data["flags"] & MessageFlag.EPHEMERAL
    done = await fi.wait_for_message_state(lambda m: m.content == "done")
    assert done.ephemeral and fd.channel_messages(fd.channel.id, include_ephemeral=False)[-1].content == "x"


# --- sharding --------------------------------------------------------------------------------------------


class ShardedBot(commands.AutoShardedBot):
    """An AutoShardedBot that answers /where with the shard and the client that got the interaction."""

    def __init__(self, name: str, **options: Any) -> None:
        super().__init__(command_prefix=commands.when_mentioned, intents=discord.Intents.default(), **options)
        self.name = name

        @app_commands.command(name="where", description="Which shard answered")
        async def where(interaction: discord.Interaction) -> None:
            assert interaction.guild is not None
            await interaction.response.send_message(f"{self.name} shard {interaction.guild.shard_id}")

        self.tree.add_command(where)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """No 5 s pause between this client's shards: the fake does not rate limit IDENTIFY."""


def shard_guilds(frames: list[tuple[int, str]]) -> tuple[set[int], set[int]]:
    """The guild ids a session's READY listed and those it got a GUILD_CREATE for."""
    ready: set[int] = set()
    created: set[int] = set()
    for _, raw in frames:
        frame = json.loads(raw)
        if frame["t"] == "READY":
            ready = {int(guild["id"]) for guild in frame["d"]["guilds"]}
        elif frame["t"] == "GUILD_CREATE":
            created.add(int(frame["d"]["id"]))
    return ready, created


async def test_auto_sharded_client_asks_gateway_bot_and_each_shard_gets_only_its_guilds(fd: FakeDiscord) -> None:
    fd.recommended_shards = 2
    on_0, on_1 = fd.guild_on_shard(0, 2), fd.guild_on_shard(1, 2)
    client = ShardedBot("one")
    async with fd.running(client):
        assert fd.requests_to(r"^GET /gateway/bot$"), "the shard count comes from GET /gateway/bot"
        assert sorted(payload["shard"] for payload in fd.identify_payloads) == [[0, 2], [1, 2]]
        assert client.shard_count == 2 and set(client.shards) == {0, 1}
        for shard_id in (0, 1):
            mine = {g.id for g in fd.guilds.values() if (g.id >> 22) % 2 == shard_id}
            assert shard_guilds(fd.sessions[(shard_id, 2)].sent) == (mine, mine)
        guild_0, guild_1 = client.get_guild(on_0.id), client.get_guild(on_1.id)
        assert guild_0 is not None and guild_0.shard_id == 0
        assert guild_1 is not None and guild_1.shard_id == 1
        limits = await client.fetch_session_start_limits()
        assert limits.max_concurrency == 1 and limits.remaining > 0


async def test_two_sharded_processes_split_the_guilds_and_each_interaction_reaches_its_shard(
    fd: FakeDiscord,
) -> None:
    on_0, on_1 = fd.guild_on_shard(0, 2), fd.guild_on_shard(1, 2)
    first = ShardedBot("first", shard_count=2, shard_ids=[0])
    second = ShardedBot("second", shard_count=2, shard_ids=[1])
    async with fd.running(first), fd.running(second):
        await first.tree.sync()
        await fd.wait_for_shards([0, 1], 2)
        assert not fd.requests_to(r"^GET /gateway/bot$"), "a given SHARD_COUNT connects at the default gateway"
        assert first.get_guild(on_0.id) is not None and first.get_guild(on_1.id) is None
        assert second.get_guild(on_1.id) is not None and second.get_guild(on_0.id) is None
        for guild, expected in ((on_1, "second shard 1"), (on_0, "first shard 0")):
            fi = await fd.send_slash_command("where", guild_id=guild.id, user=fd.alice)
            callback = await fi.wait_for_callback()
            assert fi.shard == ((guild.id >> 22) % 2, 2)
            assert callback.data["content"] == expected


async def test_an_invalid_shard_is_closed_with_4010(fd: FakeDiscord) -> None:
    client = ShardedBot("bad", shard_count=2, shard_ids=[2])
    with pytest.raises(discord.ConnectionClosed) as closed:
        async with fd.running(client):
            pass
    assert closed.value.code == 4010
