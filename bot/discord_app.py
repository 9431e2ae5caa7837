"""The adapter seam: the only module in `bot/` that imports `discord`.

`ImagineBot` owns the Discord client: it loads the cogs (an explicit list, by name: the core never imports
them), syncs slash commands only when their definition changed, maps domain errors to one ephemeral
message each, and on close stops taking jobs before disconnecting. The imagine cog starts the job service.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Coroutine
from typing import Any, cast

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.config import Settings
from bot.errors import BotError, MissingPermissionError, NotAMemberError, StartupError
from bot.i18n import DEFAULT_LANGUAGE, catalogs, language_of
from bot.messages import error_text, has_text, text
from bot.services import Services

log = logging.getLogger(__name__)

EXTENSIONS = (
    "cogs.imagine",
    "cogs.models",
    "cogs.account",
    "cogs.admin",
    "cogs.operator",
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


def permission_name(attribute: str, locale: str | None = None) -> str:
    """The name Discord's UI shows (in `locale`) for a permission attribute such as `manage_guild`."""
    key = f"permission.{attribute}"
    return text(key, locale) if has_text(key) else attribute.replace("_", " ").title()


def locale_of(interaction: discord.Interaction[Any]) -> str:
    """The member's Discord locale as a plain string (e.g. "en-US", "ko")."""
    return str(interaction.locale.value if hasattr(interaction.locale, "value") else interaction.locale)


async def send_ephemeral(interaction: discord.Interaction[Any], content: str) -> None:
    """Answer with an ephemeral message, as the first response or as a follow-up when already answered."""
    if interaction.response.is_done():
        await interaction.followup.send(content, ephemeral=True, allowed_mentions=NO_MENTIONS)
    else:
        await interaction.response.send_message(content, ephemeral=True, allowed_mentions=NO_MENTIONS)


class CatalogTranslator(app_commands.Translator):
    """Slash-command names, descriptions and choices in every shipped language, from the catalog files.

    Keys (see locales/ko.toml): `command.<path>` (description), `command_name.<path>`, `option.<path>.<name>`
    (description), `choice.<value>`, where <path> is the command's qualified name with dots. English is
    the text in the code, so only the other languages are looked up; a missing key keeps the English.
    """

    async def translate(
        self, string: app_commands.locale_str, locale: discord.Locale, context: app_commands.TranslationContextTypes
    ) -> str | None:
        language = language_of(locale.value)
        if language == DEFAULT_LANGUAGE:
            return None
        key = translation_key(context)
        return catalogs()[language].get(key) if key else None


def translation_key(context: app_commands.TranslationContextTypes) -> str | None:
    """The catalog key for one localizable piece of a command (None for what is not localized)."""
    location, data = context.location, cast(Any, context.data)
    loc = app_commands.TranslationContextLocation
    if location in (loc.command_description, loc.group_description):
        return f"command.{_path(data)}"
    if location is loc.command_name or location is loc.group_name:
        return f"command_name.{_path(data)}"
    if location is loc.parameter_description:
        return f"option.{_path(data.command)}.{data.name}"
    if location is loc.choice_name:
        return f"choice.{data.value}"
    return None  # option names stay English: they mirror the models' option names


def _path(command: Any) -> str:
    return str(command.qualified_name).replace(" ", ".")


def language_choices() -> list[app_commands.Choice[str]]:
    """/server language's choices: auto, then every shipped language (a new file adds one)."""
    codes = ["auto", DEFAULT_LANGUAGE, *sorted(set(catalogs()) - {DEFAULT_LANGUAGE})]
    return [
        app_commands.Choice(
            name=text(f"choice.{code}") if has_text(f"choice.{code}") else catalogs()[code]["language.name"],
            value=code,
        )
        for code in codes
    ]


class ImagineTree(app_commands.CommandTree["ImagineBot"]):
    """Command tree whose `on_error` is the one place where errors become what a member sees."""

    async def on_error(self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError) -> None:
        original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        if isinstance(original, BotError):
            message = error_text(original, locale_of(interaction))
        elif isinstance(original, app_commands.MissingPermissions):
            missing = ", ".join(permission_name(p, locale_of(interaction)) for p in original.missing_permissions)
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
        self._background: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run `work` in the background: a reference is kept (the loop holds tasks only weakly) and a
        failure is logged, never lost. The one way the bot starts a task it does not await."""
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())
        self.health: Any = None  # the health server (bot.ops.health), when HEALTH_PORT is set

    async def setup_hook(self) -> None:
        await self.tree.set_translator(CatalogTranslator())
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
        payload = await self.command_payload(guild)
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

    async def command_payload(self, guild: discord.abc.Snowflake | None = None) -> list[dict[str, Any]]:
        """The commands as `tree.sync` sends them, localizations included (so a new translation syncs)."""
        commands_ = self.tree.get_commands(guild=guild)
        translator = self.tree.translator
        if translator is None:
            return [command.to_dict(self.tree) for command in commands_]
        return [await command.get_translated_payload(self.tree, translator) for command in commands_]

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
