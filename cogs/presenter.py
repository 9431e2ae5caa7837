"""The Discord side of a job: edits its reply while it works, posts the images, explains failures.

Everything is driven by the stored job, never by a live `Interaction`, so a job resumed after a restart is
shown exactly like a live one. The reply is edited through the interaction webhook while its token is
valid (15 minutes); after that, or when the token is refused, through the channel with the bot token.

Any process of a sharded bot may run any job, so nothing here needs the job's guild in this process's
cache: what the cache gives (the channel, the guild's upload limit and language, a member's roles) is
fetched over REST when the guild is on another process's shard.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import discord

from bot.errors import BotError, DeliveryError
from bot.generation.images import ImageData, SharedBytesIO, fit_for_upload_async, memory_budget
from bot.i18n import server_language
from bot.jobs.progress import Progress
from bot.jobs.service import Delivery
from bot.store.records import JobRecord
from cogs.buttons import NO_MENTIONS, result_view, running_view
from cogs.rendering import failure_embed, progress_embed, result_embeds

if TYPE_CHECKING:
    from bot.discord_app import ImagineBot

log = logging.getLogger(__name__)

TOKEN_MARGIN = 60.0  # stop using an interaction token this long before it expires
MAX_ATTACHMENTS = 10  # per message (Discord)
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
DEAD_TOKEN_CODES = {50027, 10015}  # Invalid Webhook Token, Unknown Webhook
UNKNOWN_MESSAGE = 10008
ENTITY_TOO_LARGE = 40005


def _dead_token(error: discord.HTTPException) -> bool:
    return error.code in DEAD_TOKEN_CODES or error.status == 401


def _reply_id(job: JobRecord) -> int:
    """The job's reply message; a job has one before it runs (see JobService.attach_reply)."""
    if job.reply_message_id is None:
        raise DeliveryError(f"job {job.id} has no reply message")
    return job.reply_message_id


def _file_prefix(job: JobRecord) -> str:
    return f"imagine-{job.id[:12]}-"


SPOILER_PREFIX = "SPOILER_"  # Discord shows an attachment so named as a spoiler


async def server_locale(bot: ImagineBot, guild_id: int) -> str:
    """The language of what the bot posts on its own in a server (a result or failure through the channel,
    a log-channel notice): the admin's `/server language`, or else Discord's preferred locale of the server."""
    policy = await bot.services.store.get_policy(guild_id)
    guild = await guild_of(bot, guild_id) if policy.language in (None, "auto") else None
    preferred = getattr(guild.preferred_locale, "value", None) if guild is not None else None
    return server_language(policy.language, preferred)


async def guild_of(bot: ImagineBot, guild_id: int) -> discord.Guild | None:
    """The guild from the cache, or over REST when another process's shard holds it (None if gone)."""
    guild = bot.get_guild(guild_id)
    if guild is None:
        try:
            guild = await bot.fetch_guild(guild_id, with_counts=False)
        except discord.HTTPException as exc:
            log.info("guild %s unavailable over REST (%s)", guild_id, exc.status)
            return None
    return guild


class DiscordJobPresenter:
    """Implements `bot.jobs.service.JobPresenter` for Discord."""

    def __init__(self, bot: ImagineBot) -> None:
        self._bot = bot
        self._dead_tokens: set[str] = set()  # jobs whose token Discord refused: never hammer it again

    # --- routing: interaction webhook first, then the channel ------------------------------------------------

    def _token_usable(self, job: JobRecord) -> bool:
        return bool(
            job.interaction_token
            and job.application_id
            and job.id not in self._dead_tokens
            and (job.token_expires_at or 0.0) - TOKEN_MARGIN > time.time()
        )

    def _webhook(self, job: JobRecord) -> discord.Webhook:
        assert job.application_id is not None and job.interaction_token is not None
        return discord.Webhook.partial(job.application_id, job.interaction_token, client=self._bot)

    async def _guild(self, guild_id: int) -> discord.Guild | None:
        return await guild_of(self._bot, guild_id)

    async def _channel(self, job: JobRecord, *, uploading: bool) -> Any:
        """The job's channel, checked for what the bot needs there; `DeliveryError` if it may not post.

        Fetched over REST when not cached (e.g. its guild is on another process's shard); then the bot's
        permissions are not known here and Discord's answer is the check."""
        channel: Any = self._bot.get_channel(job.channel_id)
        try:
            if channel is None:
                channel = await self._bot.fetch_channel(job.channel_id)
        except discord.HTTPException as exc:
            raise DeliveryError(f"channel {job.channel_id} unavailable ({exc.status})") from None
        guild = getattr(channel, "guild", None)
        if guild is not None and guild.me is not None:
            perms = channel.permissions_for(guild.me)
            in_thread = isinstance(channel, discord.Thread)
            can_send = perms.send_messages_in_threads if in_thread else perms.send_messages
            if not (perms.view_channel and can_send and perms.embed_links and (perms.attach_files or not uploading)):
                raise DeliveryError(f"missing permissions in channel {job.channel_id}")
        return channel

    async def _upload_limit(self, job: JobRecord, *, via_webhook: bool) -> int:
        if via_webhook and job.upload_limit:
            return job.upload_limit
        guild = await self._guild(job.guild_id)
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    async def _server_locale(self, job: JobRecord) -> str:
        """The language of what is posted for the whole channel."""
        return await server_locale(self._bot, job.guild_id)

    async def _edit(self, job: JobRecord, build: Callable[[str], dict[str, Any]]) -> None:
        """Edit the job's reply (no uploads) by the best route available, with `build(locale)`'s fields: the
        member's language through their interaction, the server's through the channel."""
        if self._token_usable(job):
            try:
                await self._webhook(job).edit_message(_reply_id(job), allowed_mentions=NO_MENTIONS, **build(job.locale))
                return
            except discord.HTTPException as exc:
                if not (_dead_token(exc) or exc.code == UNKNOWN_MESSAGE):
                    raise
                self._dead_tokens.add(job.id)
                log.info("job id=%s: interaction token refused (%s); using the channel", job.id, exc.code)
        channel = await self._channel(job, uploading=False)
        fields = build(await self._server_locale(job))
        await channel.get_partial_message(_reply_id(job)).edit(allowed_mentions=NO_MENTIONS, **fields)

    # --- JobPresenter ----------------------------------------------------------------------------------------

    async def show_progress(self, job: JobRecord, progress: Progress) -> None:
        await self._edit(
            job,
            lambda locale: {
                "content": None,
                "embed": progress_embed(job, progress, locale),
                "view": running_view(job, locale),
            },
        )

    async def show_failure(self, job: JobRecord, error: BotError) -> None:
        try:
            await self._edit(
                job,
                lambda locale: {
                    "content": None,
                    "embed": failure_embed(job, error, locale),
                    "attachments": [],
                    "view": None,
                },
            )
        except discord.NotFound:
            # The reply is gone (deleted by someone): say it in a new message, for the channel to read.
            channel = await self._channel(job, uploading=False)
            await channel.send(
                content=f"<@{job.user_id}>",
                embed=failure_embed(job, error, await self._server_locale(job)),
                allowed_mentions=discord.AllowedMentions(users=[discord.Object(job.user_id)]),
            )

    async def deliver(self, job: JobRecord, delivery: Delivery) -> int:
        if self._token_usable(job):
            try:
                return await self._post(job, delivery, via_webhook=True)
            except discord.HTTPException as exc:
                if not (_dead_token(exc) or exc.code == UNKNOWN_MESSAGE):
                    raise DeliveryError(f"webhook edit failed ({exc.status}, {exc.code})") from None
                self._dead_tokens.add(job.id)
                log.info("job id=%s: token refused at delivery (%s); delivering through the channel", job.id, exc.code)
        try:
            return await self._post(job, delivery, via_webhook=False)
        except discord.HTTPException as exc:
            raise DeliveryError(f"channel delivery failed ({exc.status}, {exc.code})") from None

    async def delivered_count(self, job: JobRecord) -> int | None:
        try:
            if self._token_usable(job):
                message: Any = await self._webhook(job).fetch_message(_reply_id(job))
            else:
                channel = await self._channel(job, uploading=False)
                message = await channel.fetch_message(_reply_id(job))
        except (discord.HTTPException, DeliveryError):
            return None
        prefix = _file_prefix(job)
        return sum(
            1
            for attachment in message.attachments
            if attachment.filename.removeprefix(SPOILER_PREFIX).startswith(prefix)
        )

    async def member_roles(self, guild_id: int, user_id: int) -> Sequence[int]:
        guild = await self._guild(guild_id)
        if guild is None:
            return []
        member = guild.get_member(user_id)
        if member is None:
            try:
                member = await guild.fetch_member(user_id)
            except discord.HTTPException:
                return []
        return [role.id for role in member.roles]

    # --- uploads ---------------------------------------------------------------------------------------------

    async def _post(self, job: JobRecord, delivery: Delivery, *, via_webhook: bool) -> int:
        """Fit the images under this route's upload limit and post them: the first ten in the reply,
        the rest in follow-ups. Returns how many were posted."""
        limit = await self._upload_limit(job, via_webhook=via_webhook)
        for attempt in range(2):
            try:
                return await self._post_fitted(job, delivery, limit, via_webhook=via_webhook)
            except discord.HTTPException as exc:
                # We fit before uploading, so a 413 means the limit we knew was wrong: try once smaller.
                if exc.code != ENTITY_TOO_LARGE or attempt:
                    raise
                limit //= 2
                log.warning("job id=%s: upload refused as too large; retrying under %s bytes", job.id, limit)
        raise AssertionError("unreachable")

    async def _post_fitted(self, job: JobRecord, delivery: Delivery, limit: int, *, via_webhook: bool) -> int:
        names, sources = await self._fit(job, delivery.images, limit)
        reply_id = _reply_id(job)
        locale = job.locale if via_webhook else await self._server_locale(job)
        edit_reply: Callable[..., Awaitable[Any]]
        send_more: Callable[[list[discord.File]], Awaitable[Any]]
        if via_webhook:
            webhook = self._webhook(job)

            async def edit_reply(**fields: Any) -> None:
                await webhook.edit_message(reply_id, **fields)

            async def send_more(files: list[discord.File]) -> None:
                await webhook.send(files=files, wait=True, allowed_mentions=NO_MENTIONS)
        else:
            channel = await self._channel(job, uploading=True)

            async def edit_reply(**fields: Any) -> None:
                try:
                    await channel.get_partial_message(reply_id).edit(**fields)
                except discord.NotFound:
                    # The reply was deleted: post the result as a new message instead.
                    files = fields.pop("attachments")
                    for file in files:
                        file.reset()
                    await channel.send(files=files, **fields)

            async def send_more(files: list[discord.File]) -> None:
                await channel.send(files=files, allowed_mentions=NO_MENTIONS)

        posted = 0
        for start in range(0, len(names), MAX_ATTACHMENTS):
            chunk = range(start, min(start + MAX_ATTACHMENTS, len(names)))
            files = [_upload_file(sources[i], names[i]) for i in chunk]
            try:
                if start == 0:
                    embeds = result_embeds(
                        job,
                        [names[i] for i in chunk],
                        charged=delivery.charged,
                        available_after=delivery.available_after,
                        locale=locale,
                        origin_url=await self._origin_url(job),
                    )
                    # One stream slot of the memory budget per upload in flight (its chunks, write buffer).
                    async with memory_budget().stream(upload=True):
                        await edit_reply(
                            content=None,
                            embeds=embeds,
                            attachments=files,
                            view=result_view(job, locale),
                            allowed_mentions=NO_MENTIONS,
                        )
                else:
                    async with memory_budget().stream(upload=True):
                        await send_more(files)
            finally:
                _close_files(files)
            posted += len(files)
            if delivery.record_posted is not None:
                await delivery.record_posted(posted)
        return posted

    async def _fit(
        self, job: JobRecord, images: list[ImageData], limit: int
    ) -> tuple[list[str], list[ImageData | bytes]]:
        """File names and what to upload: the image itself when it fits (streamed, never copied), else
        its re-encoded bytes."""
        names: list[str] = []
        sources: list[ImageData | bytes] = []
        for index, image in enumerate(images, start=1):
            source: ImageData | bytes
            if image.size <= limit:
                source, extension = image, image.extension
            else:
                source, extension = await fit_for_upload_async(image, limit)
            names.append(f"{SPOILER_PREFIX if job.spoiler else ''}{_file_prefix(job)}{index}.{extension}")
            sources.append(source)
        return names, sources


    async def _origin_url(self, job: JobRecord) -> str | None:
        """A remix links to the result it came from (when that job and its reply still exist)."""
        if job.remix_of is None:
            return None
        origin = await self._bot.services.store.get_job(job.remix_of)
        if origin is None or origin.reply_message_id is None:
            return None
        return f"https://discord.com/channels/{origin.guild_id}/{origin.channel_id}/{origin.reply_message_id}"


def _upload_file(source: ImageData | bytes, filename: str) -> discord.File:
    """A `discord.File` over the bytes in memory, or over the spooled image's file (discord.py opens it,
    streams it in chunks, and closes it after the request)."""
    if isinstance(source, bytes):
        return discord.File(SharedBytesIO(source), filename=filename)
    if source.path is not None:
        return discord.File(source.path, filename=filename)
    return discord.File(SharedBytesIO(source.data), filename=filename)


def _close_files(files: list[discord.File]) -> None:
    """Close the upload streams: discord.py closes only the files it opened itself, and the request
    objects that reference a stream may outlive the upload (until the garbage collector breaks their
    cycles), which would keep an in-memory image alive after its budget was given back."""
    for file in files:
        file.close()
        file.fp.close()
