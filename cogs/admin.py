"""Admin commands: quotas, budget, usage, audit, server settings and blocked terms.

Every command needs Manage Server, enforced by a check here (`default_permissions` is only a hint that
server admins can override), and answers ephemerally. Validation and auditing happen in the core
(`bot.credits.policy`); this module only translates between Discord and it.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.charts import ChartLabels, render_usage_chart_async
from bot.credits.policy import parse_export_range
from bot.discord_app import NO_MENTIONS, language_choices, locale_of
from bot.i18n import catalogs, server_language
from bot.messages import has_text, number_text, text
from cogs.rendering import allowance_text
from cogs.request_checks import automod_fetcher

if TYPE_CHECKING:
    from bot.discord_app import ImagineBot

PeriodChoice = Literal["day", "week", "month", "unlimited"]
Amount = app_commands.Range[int, 0, 1_000_000]
GrantAmount = app_commands.Range[int, 1, 1_000_000]
ADMIN = discord.Permissions(manage_guild=True)
admin_only = app_commands.checks.has_permissions(manage_guild=True)


def when(epoch: float | None, style: str = "R") -> str:
    return discord.utils.format_dt(datetime.fromtimestamp(epoch, UTC), style) if epoch else "—"  # type: ignore[arg-type]


async def reply(interaction: discord.Interaction[Any], content: str | None = None, **kwargs: Any) -> None:
    await interaction.response.send_message(content, ephemeral=True, allowed_mentions=NO_MENTIONS, **kwargs)


async def say(interaction: discord.Interaction[Any], key: str, **params: Any) -> None:
    """Answer ephemerally with catalog message `key` in the member's locale."""
    await reply(interaction, text(key, locale_of(interaction), **params))


class AdminCog(commands.Cog):
    """Server admin controls."""

    quota = app_commands.Group(
        name="quota", description="Members' credit allowances (admins)", guild_only=True, default_permissions=ADMIN
    )
    budget = app_commands.Group(
        name="budget", description="The server's spending cap (admins)", guild_only=True, default_permissions=ADMIN
    )
    usage = app_commands.Group(
        name="usage", description="What the server spent (admins)", guild_only=True, default_permissions=ADMIN
    )
    server = app_commands.Group(
        name="server", description="Server settings for images (admins)", guild_only=True, default_permissions=ADMIN
    )
    channels = app_commands.Group(name="channels", description="Where images can be made", parent=server)
    blocklist = app_commands.Group(
        name="blocklist",
        description="Words and patterns refused in prompts (admins)",
        guild_only=True,
        default_permissions=ADMIN,
    )

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.services = bot.services

    # --- /quota ----------------------------------------------------------------------------------------------

    @quota.command(name="default")
    @admin_only
    @app_commands.describe(amount="Credits per period", period="How often the allowance resets")
    async def quota_default(self, interaction: discord.Interaction[Any], amount: Amount, period: PeriodChoice) -> None:
        """Set every member's default allowance on this server."""
        assert interaction.guild_id is not None
        policy = await self.services.policy.set_default_allowance(
            interaction.guild_id, interaction.user.id, amount, period
        )
        await say(
            interaction, "admin.default_set", allowance=allowance_text(policy.default_allowance, locale_of(interaction))
        )

    @quota.command(name="set")
    @admin_only
    @app_commands.describe(
        member="The member",
        amount="Credits per period (needed unless the period is unlimited or you remove)",
        period="How often it resets",
        remove="Remove the member's own allowance (they fall back to roles and the default)",
    )
    async def quota_set(
        self,
        interaction: discord.Interaction[Any],
        member: discord.Member,
        amount: Amount | None = None,
        period: PeriodChoice = "month",
        remove: bool = False,
    ) -> None:
        """Give one member their own allowance (it beats roles and the default)."""
        assert interaction.guild_id is not None
        allowance = await self.services.policy.set_member_allowance(
            interaction.guild_id, interaction.user.id, member.id, amount, None if remove else period
        )
        await say(
            interaction,
            "admin.member_set",
            member=member.mention,
            allowance=allowance_text(allowance, locale_of(interaction)),
        )

    @quota.command(name="role")
    @admin_only
    @app_commands.describe(
        role="The role",
        amount="Credits per period (needed unless the period is unlimited or you remove)",
        period="How often it resets",
        remove="Remove this role's allowance",
    )
    async def quota_role(
        self,
        interaction: discord.Interaction[Any],
        role: discord.Role,
        amount: Amount | None = None,
        period: PeriodChoice = "month",
        remove: bool = False,
    ) -> None:
        """Give a role an allowance; a member gets the most generous of their roles."""
        assert interaction.guild_id is not None
        allowance = await self.services.policy.set_role_allowance(
            interaction.guild_id, interaction.user.id, role.id, amount, None if remove else period
        )
        await say(
            interaction,
            "admin.role_set",
            role=role.mention,
            allowance=allowance_text(allowance, locale_of(interaction)),
        )

    @quota.command(name="grant")
    @admin_only
    @app_commands.describe(
        member="The member", amount="Credits to add this period", reason="Why (kept in the audit log)"
    )
    async def quota_grant(
        self,
        interaction: discord.Interaction[Any],
        member: discord.Member,
        amount: GrantAmount,
        reason: app_commands.Range[str, 1, 200],
    ) -> None:
        """Give a member extra credits for the current period."""
        assert interaction.guild_id is not None
        await self.services.ledger.grant(
            interaction.guild_id, member.id, amount, actor_id=interaction.user.id, reason=reason
        )
        await self._show_member(
            interaction, member, text("admin.granted", locale_of(interaction), amount=amount, member=member.mention)
        )

    @quota.command(name="deduct")
    @admin_only
    @app_commands.describe(
        member="The member", amount="Credits to remove this period", reason="Why (kept in the audit log)"
    )
    async def quota_deduct(
        self,
        interaction: discord.Interaction[Any],
        member: discord.Member,
        amount: GrantAmount,
        reason: app_commands.Range[str, 1, 200],
    ) -> None:
        """Take credits from a member for the current period."""
        assert interaction.guild_id is not None
        await self.services.ledger.deduct(
            interaction.guild_id, member.id, amount, actor_id=interaction.user.id, reason=reason
        )
        await self._show_member(
            interaction, member, text("admin.deducted", locale_of(interaction), amount=amount, member=member.mention)
        )

    @quota.command(name="show")
    @admin_only
    @app_commands.describe(member="The member")
    async def quota_show(self, interaction: discord.Interaction[Any], member: discord.Member) -> None:
        """Show a member's allowance, credits available and held."""
        await self._show_member(interaction, member, None)

    async def _show_member(
        self, interaction: discord.Interaction[Any], member: discord.Member, note: str | None
    ) -> None:
        assert interaction.guild_id is not None
        locale = locale_of(interaction)
        roles = [role.id for role in member.roles]
        balance = await self.services.ledger.balance(interaction.guild_id, member.id, roles)
        embed = discord.Embed(title=member.display_name, description=note, colour=discord.Colour.blurple())
        embed.add_field(name=text("credits.allowance", locale), value=allowance_text(balance.allowance, locale))
        embed.add_field(
            name=text("credits.available", locale),
            value=text("credits.unlimited", locale)
            if balance.available is None
            else number_text(balance.available, locale),
        )
        embed.add_field(name=text("credits.held", locale), value=number_text(balance.held, locale))
        embed.add_field(name=text("admin.spent", locale), value=number_text(balance.captured, locale))
        embed.add_field(name=text("admin.granted_total", locale), value=number_text(balance.granted, locale))
        embed.add_field(name=text("credits.resets", locale), value=when(balance.resets_at))
        await reply(interaction, embed=embed)

    # --- /budget ---------------------------------------------------------------------------------------------

    @budget.command(name="set")
    @admin_only
    @app_commands.describe(
        amount="Most credits the whole server may spend per period",
        period="How often the budget resets (unlimited removes the cap)",
    )
    async def budget_set(self, interaction: discord.Interaction[Any], amount: Amount, period: PeriodChoice) -> None:
        """Cap the whole server's spend per period."""
        assert interaction.guild_id is not None
        policy = await self.services.policy.set_budget(interaction.guild_id, interaction.user.id, amount, period)
        await say(
            interaction,
            "admin.budget_set",
            budget=allowance_text(policy.budget, locale_of(interaction)),
        )

    @budget.command(name="show")
    @admin_only
    async def budget_show(self, interaction: discord.Interaction[Any]) -> None:
        """Show the server's budget and what it has spent this period."""
        assert interaction.guild_id is not None
        locale = locale_of(interaction)
        status = await self.services.ledger.budget_status(interaction.guild_id)
        await reply(
            interaction,
            text(
                "admin.budget_show",
                locale,
                budget=allowance_text(status.budget, locale),
                spent=status.spent,
                remaining=text("credits.unlimited", locale) if status.remaining is None else status.remaining,
                resets=when(status.resets_at),
            ),
        )

    # --- /usage, /audit --------------------------------------------------------------------------------------

    @usage.command(name="server")
    @admin_only
    async def usage_server(self, interaction: discord.Interaction[Any]) -> None:
        """Spend this period by model, and the top members."""
        assert interaction.guild_id is not None
        locale = locale_of(interaction)
        report = await self.services.policy.usage(interaction.guild_id)
        embed = discord.Embed(
            title=text("admin.usage_title", locale, total=report.total),
            colour=discord.Colour.blurple(),
            description=text(
                "admin.usage_since", locale, since=when(report.period_start, "D"), resets=when(report.resets_at)
            ),
        )
        embed.add_field(
            name=text("admin.by_model", locale),
            inline=False,
            value="\n".join(
                text("usage.model_line", locale, model=model, credits=credits)
                for model, credits in sorted(report.by_model.items(), key=lambda i: -i[1])
            )[:1024]
            or "—",
        )
        embed.add_field(
            name=text("admin.top_members", locale),
            inline=False,
            value="\n".join(
                text("usage.member_line", locale, member=f"<@{user}>", credits=credits)
                for user, credits in report.top_members
            )[:1024]
            or "—",
        )
        # Drawing takes a moment (in a worker thread): acknowledge first.
        await interaction.response.defer(ephemeral=True, thinking=True)
        spend, budget = await self.services.policy.daily_usage(interaction.guild_id)
        labels = ChartLabels(
            title=text("usage.chart_title", locale, since=spend.days[0].isoformat(), until=spend.days[-1].isoformat()),
            per_day=text("usage.chart_per_day", locale),
            this_period=text("usage.chart_this_period", locale),
            total=text("usage.chart_total", locale),
            budget=text("usage.chart_budget", locale, budget=budget or 0),
        )
        png = await render_usage_chart_async(spend, budget=budget, labels=labels)
        embed.set_image(url="attachment://usage.png")
        await interaction.followup.send(
            embed=embed,
            file=discord.File(io.BytesIO(png), filename="usage.png"),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @usage.command(name="member")
    @admin_only
    @app_commands.describe(member="The member")
    async def usage_member(self, interaction: discord.Interaction[Any], member: discord.Member) -> None:
        """One member's spend this period by model."""
        assert interaction.guild_id is not None
        locale = locale_of(interaction)
        report = await self.services.policy.usage(interaction.guild_id, user_id=member.id)
        lines = (
            "\n".join(
                text("usage.model_line", locale, model=m, credits=c)
                for m, c in sorted(report.by_model.items(), key=lambda i: -i[1])
            )
            or "—"
        )
        await reply(
            interaction,
            text(
                "admin.member_usage",
                locale,
                member=member.mention,
                total=report.total,
                since=when(report.period_start, "D"),
            )
            + "\n"
            + lines,
        )

    @usage.command(name="export")
    @admin_only
    @app_commands.describe(
        start="First day, YYYY-MM-DD (server time zone); default: the period's first day",
        end="Last day, YYYY-MM-DD (inclusive); default: today",
    )
    async def usage_export(
        self, interaction: discord.Interaction[Any], start: str | None = None, end: str | None = None
    ) -> None:
        """Download the credit ledger for a date range (default: this period) as CSV."""
        assert interaction.guild_id is not None
        locale = locale_of(interaction)
        period_first, today = await self.services.policy.current_period_days(interaction.guild_id)
        start, end = start or period_first, end or today
        parse_export_range(start, end)  # a bad range is refused as the first answer
        # A long range on a busy server takes a while to read: acknowledge first (Discord's 3 s).
        await interaction.response.defer(ephemeral=True, thinking=True)
        data, rows = await self.services.policy.export_ledger(interaction.guild_id, start, end, locale)
        if len(data) > interaction.filesize_limit:
            await interaction.followup.send(text("error.export_too_large", locale, size=len(data)), ephemeral=True)
            return
        file = discord.File(fp=io.BytesIO(data), filename=f"ledger-{start}-{end}.csv")
        await interaction.followup.send(
            text("admin.exported", locale, rows=rows), file=file, ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(name="audit")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @admin_only
    async def audit(self, interaction: discord.Interaction[Any]) -> None:
        """Recent admin changes on this server."""
        assert interaction.guild_id is not None
        locale = locale_of(interaction)
        entries = await self.services.store.recent_audit(interaction.guild_id, 15)
        lines = [
            text(
                "audit.line",
                locale,
                when=when(e.created_at),
                actor=f"<@{e.actor_id}>",
                code=e.action,
                action=text(f"audit.{e.action}", locale) if has_text(f"audit.{e.action}") else "",
                detail=json.dumps(e.detail, ensure_ascii=False)[:150],
            )
            for e in entries
        ]
        await reply(interaction, "\n".join(lines)[:2000] or text("admin.audit_empty", locale))

    # --- /server settings ------------------------------------------------------------------------------------

    @server.command(name="timezone")
    @admin_only
    @app_commands.describe(name="IANA time zone, e.g. Asia/Seoul; periods reset at its midnight")
    async def server_timezone(self, interaction: discord.Interaction[Any], name: str) -> None:
        """Set the time zone in which allowance and budget periods reset."""
        assert interaction.guild_id is not None
        policy = await self.services.policy.set_timezone(interaction.guild_id, interaction.user.id, name)
        await say(interaction, "admin.timezone_set", timezone=policy.timezone)

    @server_timezone.autocomplete("name")
    async def _timezones(self, interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
        from bot.credits.policy import timezone_names

        return [app_commands.Choice(name=z, value=z) for z in timezone_names(current)]

    @server.command(name="quote")
    @admin_only
    @app_commands.describe(threshold="Ask members to confirm requests costing more than this (0: never ask)")
    async def server_quote(self, interaction: discord.Interaction[Any], threshold: Amount) -> None:
        """Set the price above which /imagine shows a quote to confirm."""
        assert interaction.guild_id is not None
        await self.services.policy.set_quote_threshold(interaction.guild_id, interaction.user.id, threshold)
        await say(interaction, "admin.quote_set", threshold=threshold)

    @server.command(name="language")
    @admin_only
    @app_commands.describe(language="auto follows the server's Discord language")
    @app_commands.choices(language=language_choices())
    async def server_language(self, interaction: discord.Interaction[Any], language: str) -> None:
        """Set the language of what the bot posts on its own in this server."""
        assert interaction.guild_id is not None
        locale = locale_of(interaction)
        policy = await self.services.policy.set_language(interaction.guild_id, interaction.user.id, language)
        preferred = getattr(interaction.guild, "preferred_locale", None)
        shown = server_language(policy.language, getattr(preferred, "value", preferred))
        key = f"language_name.{shown}"
        name = text(key, locale) if has_text(key) else catalogs()[shown]["language.name"]
        await say(
            interaction, "server.language_auto" if policy.language == "auto" else "server.language_set", language=name
        )

    @server.command(name="logchannel")
    @admin_only
    @app_commands.describe(channel="Where budget notices (50/80/100 %) and admin changes go; leave out to stop")
    async def server_logchannel(
        self, interaction: discord.Interaction[Any], channel: discord.TextChannel | None = None
    ) -> None:
        """Set the channel that gets this server's budget notices and admin changes."""
        assert interaction.guild_id is not None
        channel_id = None if channel is None else channel.id
        await self.services.operator.set_log_channel(interaction.guild_id, interaction.user.id, channel_id)
        if channel is None:
            await say(interaction, "admin.log_channel_removed")
        else:
            await say(interaction, "admin.log_channel_set", channel=channel.mention)

    @server.command(name="spoilers")
    @admin_only
    @app_commands.describe(
        mode="off: when members ask; all: every result; outside_nsfw: outside age-restricted channels"
    )
    async def server_spoilers(
        self, interaction: discord.Interaction[Any], mode: Literal["off", "all", "outside_nsfw"]
    ) -> None:
        """Choose which results are posted as spoilers."""
        assert interaction.guild_id is not None
        await self.services.policy.set_spoiler_mode(interaction.guild_id, interaction.user.id, mode)
        await say(interaction, "spoilers.set", mode=text(f"spoilers.{mode}", locale_of(interaction)))

    @server.command(name="show")
    @admin_only
    async def server_show(self, interaction: discord.Interaction[Any]) -> None:
        """Show this server's image settings, and whether its AutoMod rules are applied to prompts."""
        assert interaction.guild_id is not None
        locale = locale_of(interaction)
        policy = await self.services.store.get_policy(interaction.guild_id)
        channels = await self.services.store.allowed_channels(interaction.guild_id)
        rules = await self.services.automod.rules(interaction.guild_id, automod_fetcher(interaction))
        automod = (
            text("automod.no_permission", locale) if rules is None else text("automod.active", locale, count=len(rules))
        )
        threshold = (
            policy.quote_threshold if policy.quote_threshold is not None else self.services.settings.quote_threshold
        )
        await say(
            interaction,
            "server.show",
            timezone=policy.timezone,
            quote=threshold,
            channels=", ".join(f"<#{c}>" for c in channels) or text("channels.everywhere", locale),
            spoilers=text(f"spoilers.{policy.spoiler_mode}", locale),
            automod=automod,
        )

    @channels.command(name="add")
    @admin_only
    @app_commands.describe(channel="A channel where /imagine, re-roll and remix will work")
    async def channels_add(self, interaction: discord.Interaction[Any], channel: discord.abc.GuildChannel) -> None:
        """Allow images in a channel (once any is chosen, only the chosen ones)."""
        assert interaction.guild_id is not None
        changed = await self.services.policy.set_channel_allowed(
            interaction.guild_id, interaction.user.id, channel.id, True
        )
        await say(interaction, "channels.added" if changed else "channels.unchanged", channel=channel.mention)

    @channels.command(name="remove")
    @admin_only
    @app_commands.describe(channel="A channel to take off the list")
    async def channels_remove(self, interaction: discord.Interaction[Any], channel: discord.abc.GuildChannel) -> None:
        """Take a channel off the list (an empty list allows every channel)."""
        assert interaction.guild_id is not None
        changed = await self.services.policy.set_channel_allowed(
            interaction.guild_id, interaction.user.id, channel.id, False
        )
        await say(interaction, "channels.removed" if changed else "channels.unchanged", channel=channel.mention)

    @channels.command(name="list")
    @admin_only
    async def channels_list(self, interaction: discord.Interaction[Any]) -> None:
        """Show where images can be made."""
        assert interaction.guild_id is not None
        channels = await self.services.store.allowed_channels(interaction.guild_id)
        if channels:
            await say(interaction, "channels.list", channels=", ".join(f"<#{c}>" for c in channels))
        else:
            await say(interaction, "channels.everywhere")

    # --- /blocklist ------------------------------------------------------------------------------------------

    @blocklist.command(name="add")
    @admin_only
    @app_commands.describe(
        pattern="A word or phrase (whole words, any case), or a regular expression",
        regex="Treat the pattern as a regular expression",
    )
    async def blocklist_add(
        self, interaction: discord.Interaction[Any], pattern: app_commands.Range[str, 1, 200], regex: bool = False
    ) -> None:
        """Refuse prompts containing a word, phrase or pattern (checked before anything is spent)."""
        assert interaction.guild_id is not None
        term = await self.services.policy.add_blocked_term(interaction.guild_id, interaction.user.id, pattern, regex)
        await say(interaction, "admin.blocked_added", id=term.id, pattern=term.pattern)

    @blocklist.command(name="remove")
    @admin_only
    @app_commands.describe(term_id="The number shown by /blocklist list")
    async def blocklist_remove(self, interaction: discord.Interaction[Any], term_id: int) -> None:
        """Stop refusing a blocked term."""
        assert interaction.guild_id is not None
        removed = await self.services.policy.remove_blocked_term(interaction.guild_id, interaction.user.id, term_id)
        key = "admin.blocked_removed" if removed else "admin.blocked_missing"
        await reply(interaction, text(key, locale_of(interaction), id=term_id))

    @blocklist.command(name="list")
    @admin_only
    async def blocklist_list(self, interaction: discord.Interaction[Any]) -> None:
        """Show the blocked terms."""
        assert interaction.guild_id is not None
        terms = await self.services.store.blocked_terms(interaction.guild_id)
        locale = locale_of(interaction)
        lines = [
            text("blocklist.regex_line" if t.is_regex else "blocklist.line", locale, id=t.id, pattern=t.pattern)
            for t in terms
        ]
        await reply(interaction, "\n".join(lines)[:2000] or text("admin.blocked_empty", locale))


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(AdminCog(bot))
