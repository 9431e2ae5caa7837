"""/credits: what a member has, what is held for running jobs, when it resets, and their recent jobs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_app import NO_MENTIONS, locale_of
from bot.messages import text
from cogs.launch import role_ids

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
            value=unlimited if balance.available is None else str(balance.available),
        )
        embed.add_field(name=text("credits.held", locale), value=str(balance.held))
        allowance = balance.allowance
        embed.add_field(
            name=text("credits.allowance", locale),
            value=unlimited
            if allowance.unlimited
            else text("credits.allowance_value", locale, amount=allowance.amount, period=allowance.period),
        )
        embed.add_field(
            name=text("credits.resets", locale),
            value=discord.utils.format_dt(_dt(balance.resets_at), "R")
            if balance.resets_at
            else text("credits.never", locale),
        )
        jobs = await self.services.store.recent_jobs(interaction.guild_id, interaction.user.id, RECENT_JOBS)
        lines = [
            text(
                "credits.job_line",
                locale,
                when=discord.utils.format_dt(_dt(job.created_at), "R"),
                model=job.model,
                count=job.count,
                status=job.status.value,
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


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(AccountCog(bot))
