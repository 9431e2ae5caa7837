"""/credits: what a member has, what is held for running jobs, when it resets, and their recent jobs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_app import NO_MENTIONS, locale_of
from bot.messages import number_text, text
from cogs.launch import role_ids
from cogs.rendering import allowance_text

if TYPE_CHECKING:
    from bot.discord_app import ImagineBot

RECENT_JOBS = 5


class AccountCog(commands.Cog):
    """A member's own credits."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.services = bot.services

    @app_commands.command(name="credits")
    @app_commands.guild_only()
    async def credits(self, interaction: discord.Interaction[Any]) -> None:
        """Show your credits: available, held for running jobs, when they reset, and your recent images."""
        assert interaction.guild_id is not None
        locale = locale_of(interaction)
        balance = await self.services.ledger.balance(
            interaction.guild_id, interaction.user.id, role_ids(interaction.user)
        )
        unlimited = text("credits.unlimited", locale)
        embed = discord.Embed(title=text("credits.title", locale), colour=discord.Colour.blurple())
        embed.add_field(
            name=text("credits.available", locale),
            value=unlimited if balance.available is None else number_text(balance.available, locale),
        )
        embed.add_field(name=text("credits.held", locale), value=number_text(balance.held, locale))
        embed.add_field(name=text("credits.allowance", locale), value=allowance_text(balance.allowance, locale))
        embed.add_field(
            name=text("credits.resets", locale),
            value=_moment(balance.resets_at) if balance.resets_at else text("credits.never", locale),
        )
        jobs = await self.services.store.recent_jobs(interaction.guild_id, interaction.user.id, RECENT_JOBS)
        lines = [
            text(
                "credits.job_line",
                locale,
                when=discord.utils.format_dt(_dt(job.created_at), "R"),
                model=job.model,
                count=job.count,
                status=text(f"job_status.{job.status.value}", locale),
                charged=job.charged,
            )
            for job in jobs
        ]
        embed.add_field(
            name=text("credits.recent", locale),
            value="\n".join(lines)[:1024] or text("credits.no_jobs", locale),
            inline=False,
        )
        await interaction.response.send_message(embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS)


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _moment(epoch: float) -> str:
    """A date and time plus how far away it is, as Discord timestamps every client shows in its own language."""
    return f"{discord.utils.format_dt(_dt(epoch), 'f')} ({discord.utils.format_dt(_dt(epoch), 'R')})"


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(AccountCog(bot))
