"""/imagine: the command members use, with autocomplete that offers only what the chosen model takes."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_app import locale_of
from bot.messages import text
from cogs.buttons import DYNAMIC_ITEMS
from cogs.launch import ImagineRequest, launch_job
from cogs.presenter import DiscordJobPresenter

if TYPE_CHECKING:
    from bot.discord_app import ImagineBot

log = logging.getLogger(__name__)

MAX_CHOICES = 25  # Discord's autocomplete limit
START_RETRY_FIRST, START_RETRY_CAP = 1.0, 30.0  # seconds between attempts to start the job service


class ImagineCog(commands.Cog):
    """Image generation for members."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.services = bot.services
        self._starter: asyncio.Task[None] | None = None

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(*DYNAMIC_ITEMS)
        self._starter = self.bot.spawn(self._start_jobs(), name="start-jobs")

    async def cog_unload(self) -> None:
        if self._starter is not None:
            self._starter.cancel()

    async def _start_jobs(self) -> None:
        """Start the job service, retrying with backoff until it runs (or the bot closes).

        Recovery edits replies in channels, so it starts once the guild cache is ready; a failure (Discord
        unreachable mid-recovery) is logged and retried. Until it runs, /imagine is refused.
        """
        await self.bot.wait_until_ready()
        presenter = DiscordJobPresenter(self.bot)
        delay = START_RETRY_FIRST
        while not self.bot.is_closing:
            try:
                await self.services.jobs.start(presenter)
            except Exception:
                log.exception("the job service did not start; retrying in %.0fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, START_RETRY_CAP)
                continue
            log.info("job service started")
            return

    @app_commands.command(name="imagine")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What to draw",
        model="Image model (price per image shown); default: the server's default model",
        aspect_ratio="Shape of the image, for models that take it",
        count="How many images (see /models list for each model's limit)",
        quality="Quality, for models that take it",
        size="Size or resolution, for models that take it",
        background="Background (OpenAI models): auto, transparent or opaque",
        style="A style of this server: its template wraps your prompt",
        spoiler="Post the images as spoilers",
    )
    async def imagine(
        self,
        interaction: discord.Interaction[Any],
        prompt: app_commands.Range[str, 1, 6000],
        model: str | None = None,
        aspect_ratio: str | None = None,
        count: app_commands.Range[int, 1, 20] | None = None,
        quality: str | None = None,
        size: str | None = None,
        background: str | None = None,
        style: str | None = None,
        spoiler: bool = False,
    ) -> None:
        """Generate images from a text prompt."""
        options = {"aspect_ratio": aspect_ratio, "quality": quality, "size": size, "background": background}
        request = ImagineRequest(
            prompt=prompt, model=model, count=count, options=options, use_defaults=True, style=style, spoiler=spoiler
        )
        await launch_job(interaction, request)

    @imagine.autocomplete("style")
    async def _style_choices(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        if interaction.guild_id is None:
            return []
        needle = current.lower().strip()
        return [
            app_commands.Choice(name=f"{s.name} · {s.template}"[:100], value=s.name)
            for s in await self.services.store.styles(interaction.guild_id)
            if needle in s.name
        ][:MAX_CHOICES]

    @imagine.autocomplete("model")
    async def _model_choices(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        policy = await self.services.store.get_policy(interaction.guild_id) if interaction.guild_id else None
        locale = locale_of(interaction)
        needle = current.lower().strip()
        choices = []
        for spec in self.services.catalog.models:
            if policy is not None and not policy.is_model_allowed(spec.name):
                continue
            if needle and needle not in spec.name.lower() and needle not in spec.provider.lower():
                continue
            label = text("autocomplete.model", locale, name=spec.name, price=spec.price)
            choices.append(app_commands.Choice(name=label[:100], value=spec.name))
        return choices[:MAX_CHOICES]

    async def _option_choices(
        self, interaction: discord.Interaction[Any], option: str, current: str
    ) -> list[app_commands.Choice[str]]:
        model = getattr(interaction.namespace, "model", None)
        if not model:
            policy = await self.services.store.get_policy(interaction.guild_id) if interaction.guild_id else None
            model = (policy.default_model if policy else None) or self.services.settings.default_model
        if model not in self.services.catalog:
            return []
        allowed = self.services.catalog.choices(model, option) or []
        return [app_commands.Choice(name=v, value=v) for v in allowed if current.lower() in v.lower()][:MAX_CHOICES]

    @imagine.autocomplete("aspect_ratio")
    async def _aspect_choices(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return await self._option_choices(interaction, "aspect_ratio", current)

    @imagine.autocomplete("quality")
    async def _quality_choices(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return await self._option_choices(interaction, "quality", current)

    @imagine.autocomplete("size")
    async def _size_choices(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return await self._option_choices(interaction, "size", current)

    @imagine.autocomplete("background")
    async def _background_choices(
        self, interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return await self._option_choices(interaction, "background", current)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(ImagineCog(bot))
