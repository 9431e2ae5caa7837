"""/models: the catalog as members see it (price per image, instant or queued, the options each takes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.catalog import OPTION_NAMES
from bot.discord_app import NO_MENTIONS, locale_of
from bot.messages import text

if TYPE_CHECKING:
    from bot.discord_app import ImagineBot


class ModelsCog(commands.Cog):
    """Model listing for everyone; the admin subcommands of the same group live with it."""

    models = app_commands.Group(
        name="models", description="Image models: list them, or (admins) manage them", guild_only=True
    )

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.services = bot.services

    @models.command(name="list")
    async def list_models(self, interaction: discord.Interaction[Any]) -> None:
        """List the image models with their price per image and options."""
        locale = locale_of(interaction)
        catalog = self.services.catalog
        policy = await self.services.store.get_policy(interaction.guild_id) if interaction.guild_id else None
        default = (policy.default_model if policy else None) or self.services.settings.default_model
        lines = []
        for spec in catalog.models:
            options = []
            for option in OPTION_NAMES:
                allowed = spec.choices(option, catalog.aspect_ratios)
                if allowed is not None:
                    options.append(f"{option} ({'/'.join(allowed)})")
            if spec.max_images > 1:
                options.append(f"count (1–{spec.max_images})")
            line = text(
                "models.line",
                locale,
                name=spec.name,
                provider=spec.provider,
                price=spec.price,
                mode=text(f"models.{spec.mode}", locale),
                options=", ".join(options) or text("models.no_options", locale),
            )
            if spec.name == default:
                line += " " + text("models.default", locale)
            if policy is not None and not policy.is_model_allowed(spec.name):
                line += " " + text("models.disabled", locale)
            lines.append(line)
        embed = discord.Embed(
            title=text("models.title", locale), description="\n".join(lines)[:4096], colour=discord.Colour.blurple()
        )
        await interaction.response.send_message(embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(ModelsCog(bot))
