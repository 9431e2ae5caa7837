"""The adapter seam: the only module in `bot/` that imports `discord`.

`ImagineBot` owns the Discord client: it loads the cogs (an explicit list, by name: the core never imports
them), syncs slash commands only when their definition changed, maps domain errors to one ephemeral
message each, and on close stops taking jobs before disconnecting. The imagine cog starts the job service.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.config import Settings
from bot.errors import BotError, MissingPermissionError, NotAMemberError, StartupError
from bot.messages import error_text, text
from bot.services import Services

log = logging.getLogger(__name__)

EXTENSIONS = (
    "cogs.imagine",
    "cogs.models",
    "cogs.account",
    "cogs.admin",
    "cogs.details",
    "cogs.settings",
    "cogs.styles",
)

# What the bot needs in a channel to post results (see docs: discord-facts.md).
REQUIRED_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    attach_files=True,
    embed_links=True,
    read_message_history=True,
)

NO_MENTIONS = discord.AllowedMentions.none()


# discord.py's attribute names where Discord's own UI says something else.
PERMISSION_NAMES = {
    "manage_guild": "Manage Server",
    "manage_messages": "Manage Messages",
    "administrator": "Administrator",
}


def permission_name(attribute: str) -> str:
    """The name Discord's UI shows for a permission attribute such as `manage_guild`."""
    return PERMISSION_NAMES.get(attribute, attribute.replace("_", " ").title())


def locale_of(interaction: discord.Interaction[Any]) -> str:
    """The member's Discord locale as a plain string (e.g. "en-US", "ko")."""
    return str(interaction.locale.value if hasattr(interaction.locale, "value") else interaction.locale)


async def send_ephemeral(interaction: discord.Interaction[Any], content: str) -> None:
    """Answer with an ephemeral message, as the first response or as a follow-up when already answered."""
    if interaction.response.is_done():
        await interaction.followup.send(content, ephemeral=True, allowed_mentions=NO_MENTIONS)
    else:
        await interaction.response.send_message(content, ephemeral=True, allowed_mentions=NO_MENTIONS)


class ImagineTree(app_commands.CommandTree["ImagineBot"]):
    """Command tree whose `on_error` is the one place where errors become what a member sees."""

    async def on_error(self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError) -> None:
        original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        if isinstance(original, BotError):
            message = error_text(original, locale_of(interaction))
        elif isinstance(original, app_commands.MissingPermissions):
            missing = ", ".join(permission_name(p) for p in original.missing_permissions)
            message = error_text(MissingPermissionError(permission=missing), locale_of(interaction))
        elif isinstance(original, app_commands.TransformerError) and original.type is discord.AppCommandOptionType.user:
            message = error_text(NotAMemberError(), locale_of(interaction))
        elif isinstance(original, app_commands.NoPrivateMessage):
            message = text("error.guild_only", locale_of(interaction))
        else:
            command = interaction.command.qualified_name if interaction.command else "?"
            log.error("command %s failed", command, exc_info=original)
            message = text("error.internal", locale_of(interaction))
        try:
            await send_ephemeral(interaction, message)
        except discord.HTTPException:
            log.warning("could not send an error message for interaction %s", interaction.id, exc_info=True)


def command_hash(payload: list[dict[str, Any]]) -> str:
    """A stable fingerprint of a command set, to sync only when it changed."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class ImagineBot(commands.Bot):
    """The Discord client of imagine-bot."""

    def __init__(self, settings: Settings, services: Services) -> None:
        # The bot has no voice features: the missing voice libraries are not worth a warning at every start.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        intents = discord.Intents.none()
        intents.guilds = True  # channels, roles and filesize limits come from the guild cache
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=ImagineTree,
            allowed_mentions=NO_MENTIONS,
            help_command=None,
            guild_ready_timeout=settings.guild_ready_timeout,
        )
        self.settings = settings
        self.services = services
        self._closing = False

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.sync_commands_if_changed()
        assert self.application_id is not None
        log.info(
            "invite the bot with: %s",
            discord.utils.oauth_url(
                self.application_id,
                permissions=REQUIRED_PERMISSIONS,
                scopes=("bot", "applications.commands"),
            ),
        )

    async def sync_commands_if_changed(self) -> bool:
        """Sync slash commands when their definition differs from the last sync (hash kept in the store).

        DEV_GUILD_ID syncs to that guild only, which applies at once; global syncs are rate limited, so
        they happen only on a change, or always/never per SYNC_COMMANDS.
        """
        guild = discord.Object(self.settings.dev_guild_id) if self.settings.dev_guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        payload = [command.to_dict(self.tree) for command in self.tree.get_commands(guild=guild)]
        fingerprint = command_hash(payload)
        key = f"commands_hash:{guild.id if guild else 'global'}"
        mode = self.settings.sync_commands
        if mode == "never" or (mode == "auto" and await self.services.store.get_meta(key) == fingerprint):
            log.info("slash commands unchanged; not syncing")
            return False
        synced = await self.tree.sync(guild=guild)
        await self.services.store.set_meta(key, fingerprint)
        log.info("synced %d slash commands %s", len(synced), f"to guild {guild.id}" if guild else "globally")
        return True

    async def start(self, token: str, *, reconnect: bool = True) -> None:
        """Log in and run; a failure to start becomes a `StartupError` with one line for the operator."""
        try:
            await super().start(token, reconnect=reconnect)
        except discord.LoginFailure:
            raise StartupError("Discord rejected DISCORD_TOKEN: reset the bot token in the developer portal") from None
        except discord.PrivilegedIntentsRequired:
            raise StartupError("Discord refused the bot's intents (none are privileged; check the app)") from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            if self.user is not None:
                raise  # a failure after logging in is not a start-up problem
            raise StartupError(f"cannot reach Discord: {exc}") from None

    @property
    def is_closing(self) -> bool:
        return self._closing

    async def close(self) -> None:
        """Stop taking jobs, let running ones finish or persist them (within the grace time), then disconnect."""
        if not self._closing:
            self._closing = True
            log.info(
                "shutting down: no new jobs; waiting up to %ss for running ones", self.settings.shutdown_grace_seconds
            )
            await self.services.jobs.shutdown(self.settings.shutdown_grace_seconds)
        await super().close()
