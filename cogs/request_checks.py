"""What a request needs from Discord before it is checked: the server's AutoMod rules, the channel's
parent and age restriction. Kept apart from cogs/launch.py so the launch path stays one readable sequence."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord

from bot.moderation.automod import RuleFetcher, RulesUnavailableError
from bot.store.records import GuildPolicy

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 1.0  # seconds; the rules are read at most once a minute per server


def automod_fetcher(interaction: discord.Interaction[Any]) -> RuleFetcher:
    """Reads the server's AutoMod rules with the bot token; None when the bot lacks Manage Server."""

    async def fetch() -> list[dict[str, Any]] | None:
        guild = interaction.guild
        me = guild.me if guild is not None else None
        if guild is None or me is None or not me.guild_permissions.manage_guild:
            return None
        try:
            # Bounded: the whole request must be answered within Discord's 3 s, and a 429 would wait.
            async with asyncio.timeout(FETCH_TIMEOUT):
                return list(await interaction.client.http.get_auto_moderation_rules(guild.id))  # type: ignore[arg-type]
        except discord.Forbidden:
            return None
        except (discord.HTTPException, TimeoutError) as exc:
            # Discord is having trouble: prompts are not held up by it (the blocklist still applies).
            raise RulesUnavailableError(str(getattr(exc, "status", "timeout"))) from None

    return fetch


def parent_channel_id(interaction: discord.Interaction[Any]) -> int | None:
    """A thread's parent channel (channel rules name channels, and a thread follows its parent)."""
    return getattr(interaction.channel, "parent_id", None)


def wants_spoiler(policy: GuildPolicy, asked: bool, interaction: discord.Interaction[Any]) -> bool:
    """Whether results are posted as spoilers: the member asked, or the server's setting says so."""
    if asked or policy.spoiler_mode == "all":
        return True
    if policy.spoiler_mode == "outside_nsfw":
        channel = interaction.channel
        is_nsfw = getattr(channel, "is_nsfw", None)
        return not (callable(is_nsfw) and is_nsfw())
    return False
