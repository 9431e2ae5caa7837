"""From an interaction to a queued job: the one path shared by /imagine, Re-roll and a confirmed quote.

Order matters for the books and for the 3 s deadline: every check that can refuse runs first, then the
credits are held (one short transaction), and only then does the bot acknowledge. So every refusal,
the hold's included, is the interaction's first answer: one ephemeral message, with nothing written.
The job waits in the queue until its reply message exists.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import discord

from bot.channels import check_channel
from bot.discord_app import NO_MENTIONS, locale_of
from bot.errors import (
    EmptyPromptError,
    InsufficientCreditsError,
    ModelDisabledError,
    NotReadyError,
    PromptTooLongError,
    ShuttingDownError,
    UnknownStyleError,
)
from bot.members import apply_defaults
from bot.messages import text
from bot.services import Services
from bot.store.records import NewJob
from bot.styles import apply_style
from cogs.request_checks import automod_fetcher, parent_channel_id, wants_spoiler

log = logging.getLogger(__name__)

INTERACTION_TOKEN_LIFETIME = 15 * 60  # seconds (Discord)


@dataclass(frozen=True)
class ImagineRequest:
    """What a member asked for, before any check."""

    prompt: str
    model: str | None
    count: int | None = 1  # None: the member's saved default (or 1)
    options: dict[str, str | None] = field(default_factory=dict)
    job_id: str | None = None  # minted with a price quote, so that its confirmation is idempotent
    use_defaults: bool = False  # fill what is left out from the member's saved defaults (/imagine)
    style: str | None = None  # a server style to apply to `prompt`
    applied_style: str | None = None  # `prompt` already carries this style (a confirmed quote)
    spoiler: bool = False
    remix_of: str | None = None


def role_ids(member: discord.abc.User) -> list[int]:
    """Role ids of a guild member (a plain user has none)."""
    return [role.id for role in getattr(member, "roles", [])]


async def launch_job(
    interaction: discord.Interaction[Any], request: ImagineRequest, *, confirmed: bool = False
) -> None:
    """Check `request`, show a price quote when it is expensive, else hold credits and queue the job.

    Raises `RequestError` subclasses for refusals before anything is acknowledged; the caller's error
    handler shows them ephemerally.
    """
    services: Services = interaction.client.services  # type: ignore[attr-defined]
    settings = services.settings
    guild_id = interaction.guild_id
    if guild_id is None or interaction.channel_id is None:
        raise discord.app_commands.NoPrivateMessage()
    locale = locale_of(interaction)

    await check_channel(services.store, guild_id, interaction.channel_id, parent_channel_id(interaction))
    prompt = request.prompt.strip()
    if not prompt:
        raise EmptyPromptError()
    policy = await services.store.get_policy(guild_id)
    fallback_model = policy.default_model or settings.default_model
    requested_model, count, options = request.model, request.count or 1, request.options
    if request.use_defaults:
        saved = await services.store.member_defaults(guild_id, interaction.user.id)
        requested_model, count, options = apply_defaults(
            services.catalog,
            saved,
            model=request.model,
            count=request.count,
            options=request.options,
            fallback_model=fallback_model,
        )
    style_name = request.applied_style
    if request.style:
        style = next((s for s in await services.store.styles(guild_id) if s.name == request.style.lower()), None)
        if style is None:
            raise UnknownStyleError(style=request.style)
        prompt, style_name = apply_style(style.template, prompt), style.name
    if len(prompt) > settings.max_prompt_length:
        raise PromptTooLongError(length=len(prompt), limit=settings.max_prompt_length)
    spec = services.catalog.get(requested_model or fallback_model)
    if not policy.is_model_allowed(spec.name):
        raise ModelDisabledError(model=spec.name)
    prepared = services.catalog.prepare(spec.name, count, options)
    roles = role_ids(interaction.user)
    await services.moderator.check(guild_id, prompt)  # the final prompt: a style cannot smuggle a term in
    await services.automod.check(
        guild_id,
        prompt,
        automod_fetcher(interaction),
        role_ids=roles,
        channel_ids=[c for c in (interaction.channel_id, parent_channel_id(interaction)) if c],
    )
    if not services.jobs.accepting:
        raise ShuttingDownError()
    if not services.jobs.dispatching:
        raise NotReadyError()  # still recovering after a start: holding now could strand the credits
    spoiler = wants_spoiler(policy, request.spoiler, interaction)

    threshold = policy.quote_threshold if policy.quote_threshold is not None else settings.quote_threshold
    if not confirmed and threshold and prepared.total_price > threshold:
        from cogs.quote import QuoteView

        balance = await services.ledger.balance(guild_id, interaction.user.id, roles)
        if balance.available is not None and balance.available < prepared.total_price:
            # An overdrawn member (deducted below zero) has 0 available, as the hold's own refusal says.
            raise InsufficientCreditsError(needed=prepared.total_price, available=max(balance.available, 0))
        after = (
            text("credits.unlimited", locale) if balance.available is None else balance.available - prepared.total_price
        )
        resolved = ImagineRequest(
            prompt,
            spec.name,
            prepared.count,
            dict(prepared.options),
            job_id=request.job_id,
            applied_style=style_name,
            spoiler=spoiler,
            remix_of=request.remix_of,
        )
        view = QuoteView(resolved, owner_id=interaction.user.id, locale=locale)
        view.origin = interaction
        await interaction.response.send_message(
            text(
                "quote.text",
                locale,
                total=prepared.total_price,
                count=prepared.count,
                price=spec.price,
                model=spec.name,
                after=after,
            ),
            view=view,
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )
        return

    # Hold first, so that a refusal (credits, budget) is our first answer and ephemeral; the hold is one
    # short transaction, far inside Discord's 3 seconds.
    job = NewJob(
        id=request.job_id or uuid.uuid4().hex,
        guild_id=guild_id,
        channel_id=interaction.channel_id,
        user_id=interaction.user.id,
        model=spec.name,
        prompt=prompt,
        count=prepared.count,
        price=spec.price,
        params=dict(prepared.params),
        options=dict(prepared.options),
        mode=spec.mode,
        locale=locale,
        application_id=interaction.application_id,
        interaction_token=interaction.token,
        token_expires_at=interaction.created_at.timestamp() + INTERACTION_TOKEN_LIFETIME,
        upload_limit=interaction.filesize_limit,
        style=style_name,
        remix_of=request.remix_of,
        spoiler=spoiler,
        request_id=interaction.id,  # the queue's order: when the member asked
    )
    await services.jobs.submit(job, roles)

    # Acknowledge: the message the job lives in. If Discord refuses, nobody will see the job: refund it.
    try:
        if confirmed:
            await interaction.response.edit_message(content=text("quote.confirmed", locale), view=None)
            reply: discord.Message | discord.WebhookMessage = await interaction.followup.send(
                text("status.submitting", locale), wait=True, allowed_mentions=NO_MENTIONS
            )
            reply_id = reply.id
        else:
            callback = await interaction.response.defer(thinking=True)
            # The callback's answer names the "thinking" message: no request of its own to learn its id
            # (asking for it was one Discord request per job, on the way from acknowledgement to start).
            message_id = callback.message_id if callback is not None else None
            reply_id = message_id if message_id is not None else (await interaction.original_response()).id
    except discord.HTTPException:
        log.warning("could not acknowledge job %s; cancelling it", job.id, exc_info=True)
        await services.jobs.cancel(job.id, interaction.user.id)
        raise
    await services.jobs.attach_reply(job.id, reply_id)
