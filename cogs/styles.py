"""/styles: a server's named prompt templates (admins add and remove; anyone lists)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_app import locale_of
from bot.messages import text
from bot.styles import check_style
from cogs.admin import ADMIN, admin_only, reply, say

if TYPE_CHECKING:
    from bot.discord_app import ImagineBot


class StylesCog(commands.Cog):
    """Server styles."""

    styles = app_commands.Group(
        name="styles", description="The server's styles for /imagine", guild_only=True, default_permissions=ADMIN
    )

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.services = bot.services

    @styles.command(name="add")
    @admin_only
    @app_commands.describe(
        name="Short name members pick", template="The prompt, with {prompt} where the member's text goes"
    )
    async def add(
        self,
        interaction: discord.Interaction[Any],
        name: app_commands.Range[str, 1, 32],
        template: app_commands.Range[str, 1, 1000],
    ) -> None:
        """Add a style (or change the template of an existing one)."""
        assert interaction.guild_id is not None
        name, template = check_style(name, template)
        await self.services.store.put_style(
            interaction.guild_id, name, template, actor_id=interaction.user.id, now=interaction.created_at.timestamp()
        )
        await say(interaction, "styles.added", name=name, template=template)

    @styles.command(name="remove")
    @admin_only
    @app_commands.describe(name="The style's name")
    async def remove(self, interaction: discord.Interaction[Any], name: str) -> None:
        """Remove a style."""
        assert interaction.guild_id is not None
        removed = await self.services.store.remove_style(
            interaction.guild_id,
            name.strip().lower(),
            actor_id=interaction.user.id,
            now=interaction.created_at.timestamp(),
        )
        await say(interaction, "styles.removed" if removed else "styles.missing", name=name)

    @styles.command(name="list")
    @admin_only
    async def list_styles(self, interaction: discord.Interaction[Any]) -> None:
        """List the server's styles."""
        assert interaction.guild_id is not None
        locale = locale_of(interaction)
        styles = await self.services.store.styles(interaction.guild_id)
        lines = [text("styles.line", locale, name=s.name, template=s.template) for s in styles]
        await reply(interaction, "\n".join(lines)[:2000] or text("styles.empty", locale))


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(StylesCog(bot))
