"""`/operator …`: the bot operator's commands, and the Discord side of the operator's alerts.

The operator is the application's owner or a member of its team (discord.py's `is_owner`), or a user in
OWNER_IDS. Every command checks that in the bot before doing anything (Discord's `default_permissions` only
hides the commands from non-admins) and answers ephemerally. Alerts to OPERATOR_ALERT_CHANNEL_ID and to a
server's log channel are posted from here, each in the language of the server the channel is in; admin changes
are forwarded to the log channel after each command.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_app import NO_MENTIONS, locale_of
from bot.errors import InvalidGuildIdError, NotOperatorError
from bot.messages import text
from cogs.presenter import server_locale

if TYPE_CHECKING:
    from bot.discord_app import ImagineBot

log = logging.getLogger(__name__)

CapPeriod = Literal["day", "week", "month", "remove"]
CapAmount = app_commands.Range[int, 0, 1_000_000]


def guild_id_of(value: str) -> int:
    """A server id typed by the operator (snowflakes exceed Discord's integer option range: a string)."""
    value = value.strip()
    if not value.isdigit() or not 0 < int(value) < 2**63:
        raise InvalidGuildIdError(value=value[:30])
    return int(value)


class OperatorCog(commands.Cog):
    """The bot operator's seat."""

    operator = app_commands.Group(
        name="operator",
        description="The bot operator's controls (operator only)",
        default_permissions=discord.Permissions(administrator=True),
    )

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.services = bot.services
        alerts = self.services.alerts
        if alerts.operator_sink is None and bot.settings.operator_alert_channel_id is not None:
            channel_id = bot.settings.operator_alert_channel_id
            alerts.operator_sink = lambda content: self._post(channel_id, content)
            alerts.operator_language = lambda: self._channel_language(channel_id)
        alerts.guild_sink = self._post
        alerts.guild_language = lambda guild_id: server_locale(bot, guild_id)

    async def _post(self, channel_id: int, content: str) -> None:
        channel = self.bot.get_channel(channel_id) or await self.bot.fetch_channel(channel_id)
        await channel.send(content, allowed_mentions=NO_MENTIONS)  # type: ignore[union-attr]

    async def _channel_language(self, channel_id: int) -> str | None:
        """The language of the server that holds a channel (None for a channel outside any server)."""
        channel = self.bot.get_channel(channel_id) or await self.bot.fetch_channel(channel_id)
        guild = getattr(channel, "guild", None)
        return None if guild is None else await server_locale(self.bot, guild.id)

    async def is_operator(self, user: discord.abc.User) -> bool:
        """The application's owner or team member, or a user in OWNER_IDS."""
        return user.id in self.bot.settings.operator_ids or await self.bot.is_owner(user)

    async def _require_operator(self, interaction: discord.Interaction[Any]) -> str:
        if not await self.is_operator(interaction.user):
            log.warning("user %s tried /operator without being an operator", interaction.user.id)
            raise NotOperatorError()
        return locale_of(interaction)

    @staticmethod
    async def _answer(interaction: discord.Interaction[Any], content: str) -> None:
        await interaction.response.send_message(content[:2000], ephemeral=True, allowed_mentions=NO_MENTIONS)

    # --- reports -------------------------------------------------------------------------------------------

    @operator.command(name="spend")
    async def spend(self, interaction: discord.Interaction[Any]) -> None:
        """The bot's spend today and this month, by server and by model."""
        locale = await self._require_operator(interaction)
        report = await self.services.operator.spend()
        none = text("operator.none", locale)
        servers = sorted(report.month_by_guild, key=lambda g: -report.month_by_guild[g])[:15]
        models = sorted(report.month_by_model, key=lambda m: -report.month_by_model[m])[:15]
        lines = [
            text("operator.spend_title", locale, today=report.today, month=report.month, held=report.held_now),
            f"**{text('operator.by_server', locale)}**",
            *(f"`{g}` · {report.today_by_guild.get(g, 0)} / {report.month_by_guild[g]}" for g in servers),
            *([] if servers else [none]),
            f"**{text('operator.by_model', locale)}**",
            *(f"`{m}` · {report.today_by_model.get(m, 0)} / {report.month_by_model[m]}" for m in models),
            *([] if models else [none]),
        ]
        await self._answer(interaction, "\n".join(lines))

    @operator.command(name="fleet")
    async def fleet(self, interaction: discord.Interaction[Any]) -> None:
        """Processes alive, and jobs running and queued."""
        locale = await self._require_operator(interaction)
        fleet = await self.services.operator.fleet()
        state = text("operator.state_paused" if fleet.paused else "operator.state_running", locale)
        lines = [text("operator.fleet", locale, running=fleet.running, queued=fleet.queued, state=state)]
        unsharded = text("operator.fleet_unsharded", locale)
        lines += [
            text(
                "operator.fleet_process",
                locale,
                name=p.name,
                running=p.running_jobs,
                shards=", ".join(map(str, p.shards)) or unsharded,
            )
            for p in fleet.processes
        ]
        await self._answer(interaction, "\n".join(lines))

    # --- caps and access -----------------------------------------------------------------------------------

    @operator.command(name="caps")
    async def caps(self, interaction: discord.Interaction[Any]) -> None:
        """Show the bot's caps, the default per-server cap, access, and each server's cap and approval."""
        locale = await self._require_operator(interaction)
        caps = self.services.operator.caps
        none = text("operator.no_cap", locale)
        default = caps.default_guild_cap
        lines = [
            text(
                "operator.caps",
                locale,
                daily=none if caps.daily_cap is None else caps.daily_cap,
                monthly=none if caps.monthly_cap is None else caps.monthly_cap,
                guild_default=none if default is None else f"{default.amount}/{default.period}",
                access="allowlist" if caps.allowlist else "open",
            )
        ]
        for ops in (await self.services.operator.servers())[:30]:
            lines.append(
                text(
                    "operator.cap_line",
                    locale,
                    guild=ops.guild_id,
                    cap=none if ops.cap is None else f"{ops.cap.amount}/{ops.cap.period}",
                    approved=text("operator.approved" if ops.approved else "operator.not_approved", locale),
                )
            )
        await self._answer(interaction, "\n".join(lines))

    @operator.command(name="cap")
    @app_commands.describe(
        server="The server's id",
        amount="Most credits the server may spend per period, whatever its own budget says",
        period="How often the cap resets; remove: back to OPERATOR_GUILD_CAP",
    )
    async def cap(
        self, interaction: discord.Interaction[Any], server: str, period: CapPeriod, amount: CapAmount | None = None
    ) -> None:
        """Cap one server's spend (above its own budget and allowances)."""
        locale = await self._require_operator(interaction)
        guild_id = guild_id_of(server)
        ops = await self.services.operator.set_guild_cap(
            guild_id, interaction.user.id, amount, None if period == "remove" else period
        )
        cap = text("operator.no_cap", locale) if ops.cap is None else f"{ops.cap.amount}/{ops.cap.period}"
        await self._answer(interaction, text("operator.cap_set", locale, guild=guild_id, cap=cap))

    @operator.command(name="approve")
    @app_commands.describe(server="The server's id")
    async def approve(self, interaction: discord.Interaction[Any], server: str) -> None:
        """Approve a server (needed with GUILD_ACCESS=allowlist)."""
        locale = await self._require_operator(interaction)
        guild_id = guild_id_of(server)
        await self.services.operator.set_approved(guild_id, interaction.user.id, True)
        await self._answer(interaction, text("operator.server_approved", locale, guild=guild_id))

    @operator.command(name="remove")
    @app_commands.describe(server="The server's id")
    async def remove(self, interaction: discord.Interaction[Any], server: str) -> None:
        """Withdraw a server's approval."""
        locale = await self._require_operator(interaction)
        guild_id = guild_id_of(server)
        await self.services.operator.set_approved(guild_id, interaction.user.id, False)
        await self._answer(interaction, text("operator.server_removed", locale, guild=guild_id))

    # --- the kill switch -----------------------------------------------------------------------------------

    @operator.command(name="pause")
    async def pause(self, interaction: discord.Interaction[Any]) -> None:
        """Stop all new generation (running jobs finish)."""
        locale = await self._require_operator(interaction)
        await self.services.operator.set_paused(True)
        await self._answer(interaction, text("operator.paused", locale))

    @operator.command(name="resume")
    async def resume(self, interaction: discord.Interaction[Any]) -> None:
        """Let generation run again."""
        locale = await self._require_operator(interaction)
        await self.services.operator.set_paused(False)
        self.services.jobs.wake()
        await self._answer(interaction, text("operator.resumed", locale))

    # --- the server's log channel --------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_app_command_completion(self, interaction: discord.Interaction[Any], command: Any) -> None:
        if interaction.guild_id is not None:
            try:
                await self.services.alerts.forward_audit(interaction.guild_id)
            except Exception:
                log.warning("could not forward admin changes of server %s", interaction.guild_id, exc_info=True)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(OperatorCog(bot))
