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

from bot.discord_app import NO_MENTIONS, locale_of
from bot.errors import (
    EmptyPromptError,
    InsufficientCreditsError,
    ModelDisabledError,
    NotReadyError,
    PromptTooLongError,
    ShuttingDownError,
)
from bot.messages import text
from bot.services import Services
from bot.store.records import NewJob

log = logging.getLogger(__name__)

INTERACTION_TOKEN_LIFETIME = 15 * 60  # seconds (Discord)


@dataclass(frozen=True)
class ImagineRequest:
    """What a member asked for, before any check."""

    prompt: str
    model: str | None
    count: int = 1
    options: dict[str, str | None] = field(default_factory=dict)
    job_id: str | None = None  # minted with a price quote, so that its confirmation is idempotent


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

    prompt = request.prompt.strip()
    if not prompt:
        raise EmptyPromptError()
    if len(prompt) > settings.max_prompt_length:
        raise PromptTooLongError(length=len(prompt), limit=settings.max_prompt_length)
    policy = await services.store.get_policy(guild_id)
    model_name = request.model or policy.default_model or settings.default_model
    spec = services.catalog.get(model_name)
    if not policy.is_model_allowed(spec.name):
        raise ModelDisabledError(model=spec.name)
    prepared = services.catalog.prepare(spec.name, request.count, request.options)
    await services.moderator.check(guild_id, prompt)
    if not services.jobs.accepting:
        raise ShuttingDownError()
    if not services.jobs.dispatching:
        raise NotReadyError()  # still recovering after a start: holding now could strand the credits
    roles = role_ids(interaction.user)

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
        resolved = ImagineRequest(prompt, spec.name, request.count, dict(prepared.options), request.job_id)
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
    )
    await services.jobs.submit(job, roles)

    # Acknowledge: the message the job lives in. If Discord refuses, nobody will see the job: refund it.
    try:
        if confirmed:
            await interaction.response.edit_message(content=text("quote.confirmed", locale), view=None)
            reply: discord.Message | discord.WebhookMessage = await interaction.followup.send(
                text("status.submitting", locale), wait=True, allowed_mentions=NO_MENTIONS
            )
        else:
            await interaction.response.defer(thinking=True)
            reply = await interaction.original_response()
    except discord.HTTPException:
        log.warning("could not acknowledge job %s; cancelling it", job.id, exc_info=True)
        await services.jobs.cancel(job.id, interaction.user.id)
        raise
    await services.jobs.attach_reply(job.id, reply.id)
