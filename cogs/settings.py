"""/settings: a member's saved /imagine defaults (model, aspect ratio, count, model options)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.members import clean_defaults
from cogs.admin import say

if TYPE_CHECKING:
    from bot.discord_app import ImagineBot


def _describe(defaults: dict[str, Any]) -> str:
    return " · ".join(f"{name}: `{value}`" for name, value in defaults.items())


class SettingsCog(commands.Cog):
    """Saved defaults for members."""

    settings = app_commands.Group(name="settings", description="Your saved /imagine defaults", guild_only=True)

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.services = bot.services

    @settings.command(name="save")
    @app_commands.describe(
        model="Your default model",
        aspect_ratio="Your default shape (used when the model takes it)",
        count="Your default number of images",
        quality="Your default quality (used when the model takes it)",
        size="Your default size (used when the model takes it)",
        background="Your default background (used when the model takes it)",
    )
    async def save(
        self,
        interaction: discord.Interaction[Any],
        model: str | None = None,
        aspect_ratio: str | None = None,
        count: app_commands.Range[int, 1, 20] | None = None,
        quality: str | None = None,
        size: str | None = None,
        background: str | None = None,
    ) -> None:
        """Save defaults that /imagine uses for what you leave out (the others you saved are kept)."""
        assert interaction.guild_id is not None
        wanted = {
            "model": model,
            "aspect_ratio": aspect_ratio,
            "count": count,
            "quality": quality,
            "size": size,
            "background": background,
        }
        given = clean_defaults(self.services.catalog, wanted)
        # Saving one option keeps the others: a member builds their defaults up one at a time.
        saved = {**await self.services.store.member_defaults(interaction.guild_id, interaction.user.id), **given}
        if not saved:
            await say(interaction, "settings.empty")
            return
        await self.services.store.set_member_defaults(
            interaction.guild_id, interaction.user.id, saved, now=interaction.created_at.timestamp()
        )
        await say(interaction, "settings.saved", defaults=_describe(saved))

    @settings.command(name="show")
    async def show(self, interaction: discord.Interaction[Any]) -> None:
        """Show your saved defaults."""
        assert interaction.guild_id is not None
        saved = await self.services.store.member_defaults(interaction.guild_id, interaction.user.id)
        if saved:
            await say(interaction, "settings.show", defaults=_describe(saved))
        else:
            await say(interaction, "settings.empty")

    @settings.command(name="reset")
    async def reset(self, interaction: discord.Interaction[Any]) -> None:
        """Forget your saved defaults."""
        assert interaction.guild_id is not None
        await self.services.store.set_member_defaults(
            interaction.guild_id, interaction.user.id, None, now=interaction.created_at.timestamp()
        )
        await say(interaction, "settings.reset")

    @save.autocomplete("model")
    async def _models(self, interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
        needle = current.lower()
        return [
            app_commands.Choice(name=spec.name, value=spec.name)
            for spec in self.services.catalog.models
            if needle in spec.name.lower()
        ][:25]


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(SettingsCog(bot))
