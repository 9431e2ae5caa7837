"""Remix and Details on every result, and /job: what a result was made from, and running it again edited.

Both buttons are dynamic items (their custom_id carries the job id, their state comes from the store), so
they keep working after a restart. The Remix modal itself lives in memory while the member edits it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_app import NO_MENTIONS, locale_of
from bot.errors import InvalidCountError, JobNotFoundError
from bot.messages import text
from bot.remix import format_options, parse_options
from bot.store.records import JobRecord
from cogs.buttons import JOB_ID, RESULT_BUTTONS, answer_errors
from cogs.launch import ImagineRequest, launch_job

if TYPE_CHECKING:
    from bot.discord_app import ImagineBot

log = logging.getLogger(__name__)

TEXT_INPUT_LIMIT = 4000  # Discord's longest text input
REMIX_TIMEOUT = 15 * 60.0


def _when(epoch: float) -> str:
    return discord.utils.format_dt(datetime.fromtimestamp(epoch, UTC), "f")


async def _job_in_guild(interaction: discord.Interaction[Any], job_id: str) -> JobRecord:
    """The job, if it belongs to this server (a server sees only its own jobs)."""
    store = interaction.client.services.store  # type: ignore[attr-defined]
    job = await store.get_job(job_id.strip().lower())
    if job is None or job.guild_id != interaction.guild_id:
        raise JobNotFoundError()
    return job


def details_embed(job: JobRecord, locale: str) -> discord.Embed:
    """Everything the job was made from and what it cost."""
    none = text("details.none", locale)
    embed = discord.Embed(title=text("details.title", locale), colour=discord.Colour.blurple())
    prompt_key = "details.sent_prompt" if job.style else "details.prompt"
    embed.add_field(name=text(prompt_key, locale), value=job.prompt[:1024], inline=False)
    embed.add_field(name=text("details.model", locale), value=f"`{job.model}`", inline=True)
    if job.style:
        embed.add_field(name=text("details.style", locale), value=f"`{job.style}`", inline=True)
    options = "\n".join(f"{name}: {value}" for name, value in sorted(job.params.items())) or none
    embed.add_field(name=text("details.options", locale), value=options[:1024], inline=False)
    embed.add_field(
        name=text("details.count", locale),
        value=text("details.count_value", locale, delivered=job.delivered_count, count=job.count),
        inline=True,
    )
    embed.add_field(
        name=text("details.charged", locale),
        value=text("details.charged_value", locale, charged=job.charged, held=job.hold_amount, price=job.price),
        inline=True,
    )
    embed.add_field(name=text("details.asked_by", locale), value=f"<@{job.user_id}>", inline=True)
    embed.add_field(name=text("details.when", locale), value=_when(job.created_at), inline=True)
    took = (
        text("details.took_value", locale, seconds=job.finished_at - job.created_at)
        if job.finished_at is not None
        else "—"
    )
    embed.add_field(name=text("details.took", locale), value=took, inline=True)
    embed.add_field(name=text("details.status", locale), value=str(job.status), inline=True)
    if job.remix_of:
        embed.add_field(name=text("details.remix_of", locale), value=f"`{job.remix_of}`", inline=False)
    embed.add_field(name=text("details.job_id", locale), value=f"`{job.id}`", inline=False)
    return embed


class RemixModal(discord.ui.Modal):
    """The job's prompt, model, count and options, editable; submitting runs the normal /imagine path."""

    def __init__(self, job: JobRecord, *, max_prompt: int, locale: str) -> None:
        super().__init__(
            title=text("remix.title", locale), timeout=REMIX_TIMEOUT, custom_id=f"imagine:remixform:{job.id}"
        )
        self.job = job
        limit = min(TEXT_INPUT_LIMIT, max_prompt)
        self.prompt: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label=text("remix.prompt", locale),
            style=discord.TextStyle.paragraph,
            default=job.prompt[:limit],
            max_length=limit,
            custom_id="prompt",
        )
        self.model: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label=text("remix.model", locale), default=job.model, max_length=100, custom_id="model"
        )
        self.count: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label=text("details.count", locale), default=str(job.count), max_length=2, custom_id="count"
        )
        self.options: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label=text("remix.options", locale),
            style=discord.TextStyle.paragraph,
            default=format_options(job.options),
            required=False,
            max_length=400,
            custom_id="options",
        )
        for item in (self.prompt, self.model, self.count, self.options):
            self.add_item(item)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        async def go() -> None:
            model = self.model.value.strip()
            raw_count = self.count.value.strip()
            if not raw_count.isdigit():
                raise InvalidCountError(count=raw_count[:10], model=model, limit=20)
            request = ImagineRequest(
                prompt=self.prompt.value,
                model=model or None,
                count=int(raw_count),
                options=parse_options(self.options.value or ""),
                spoiler=self.job.spoiler,
                remix_of=self.job.id,
            )
            await launch_job(interaction, request)

        await answer_errors(interaction, go)


class ResultAction(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imagine:(?P<action>remix|details):" + JOB_ID,
):
    """Remix (opens the modal) and Details (ephemeral, to anyone) under a result."""

    def __init__(self, action: str, job_id: str, locale: str = "en") -> None:
        emoji = "🎨" if action == "remix" else "ℹ️"
        super().__init__(
            discord.ui.Button(
                label=text(f"button.{action}", locale),
                style=discord.ButtonStyle.secondary,
                emoji=emoji,
                custom_id=f"imagine:{action}:{job_id}",
            )
        )
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: Any, /
    ) -> ResultAction:
        return cls(match["action"], match["job"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        action = self._remix if self.action == "remix" else self._details
        await answer_errors(interaction, lambda: action(interaction))

    async def _details(self, interaction: discord.Interaction[Any]) -> None:
        job = await _job_in_guild(interaction, self.job_id)
        await interaction.response.send_message(
            embed=details_embed(job, locale_of(interaction)), ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    async def _remix(self, interaction: discord.Interaction[Any]) -> None:
        job = await _job_in_guild(interaction, self.job_id)
        settings = interaction.client.services.settings  # type: ignore[attr-defined]
        modal = RemixModal(job, max_prompt=settings.max_prompt_length, locale=locale_of(interaction))
        await interaction.response.send_modal(modal)


def remix_button(job: JobRecord, locale: str) -> discord.ui.Item[Any]:
    return ResultAction("remix", job.id, locale)


def details_button(job: JobRecord, locale: str) -> discord.ui.Item[Any]:
    return ResultAction("details", job.id, locale)


class DetailsCog(commands.Cog):
    """/job and the result buttons Remix and Details."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ResultAction)
        RESULT_BUTTONS.update(remix=remix_button, details=details_button)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ResultAction)
        for action in ("remix", "details"):
            RESULT_BUTTONS.pop(action, None)

    @app_commands.command(name="job")
    @app_commands.guild_only()
    @app_commands.describe(id="The job id (shown by the Details button)")
    async def job(self, interaction: discord.Interaction[Any], id: app_commands.Range[str, 32, 32]) -> None:
        """Show what one of this server's images was made from."""
        found = await _job_in_guild(interaction, id)
        await interaction.response.send_message(
            embed=details_embed(found, locale_of(interaction)), ephemeral=True, allowed_mentions=NO_MENTIONS
        )


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(DetailsCog(bot))
