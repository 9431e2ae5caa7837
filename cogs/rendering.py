"""How a job looks in Discord: embeds for progress, results and failures. Pure functions, no I/O."""

from __future__ import annotations

import time

import discord

from bot.errors import BotError, ContentPolicyError
from bot.jobs.progress import Progress
from bot.messages import error_text, text
from bot.store.records import Allowance, JobRecord

COLOR_WORKING = discord.Colour.blurple()
COLOR_DONE = discord.Colour.green()
COLOR_FAILED = discord.Colour.red()
COLOR_REFUSED = discord.Colour.orange()

PROMPT_LIMIT = 1000  # shown in a field (max 1024)


def allowance_text(allowance: Allowance | None, locale: str) -> str:
    """An allowance or budget as a member reads it: "1,000 per month", "월 1,000 크레딧", "unlimited"."""
    if allowance is None:
        return text("admin.not_set", locale)
    if allowance.unlimited:
        return text("credits.unlimited", locale)
    period = text(f"period.{allowance.period}", locale)
    return text("credits.allowance_value", locale, amount=allowance.amount, period=period)


def _relative(epoch: float) -> str:
    """A Discord timestamp: each viewer sees "in 20 seconds" in their own language, counting live."""
    return f"<t:{int(epoch)}:R>"


def progress_line(progress: Progress, locale: str) -> str:
    """The status line for a stage, with the estimated start or end when one is known and still ahead."""
    now = time.time()
    if progress.stage == "queued":
        if progress.starts_at is not None and progress.starts_at > now:
            return text(
                "status.queued_eta", locale, position=progress.position or 1, starts=_relative(progress.starts_at)
            )
        return text("status.queued", locale, position=progress.position or 1)
    if progress.stage == "generating":
        if progress.ends_at is not None and progress.ends_at > now:
            return text("status.generating_eta", locale, elapsed=progress.elapsed, ends=_relative(progress.ends_at))
        return text("status.generating", locale, elapsed=progress.elapsed)
    if progress.stage == "downloading":
        return text("status.downloading", locale, count=progress.count)
    return text(f"status.{progress.stage}", locale)


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def job_embed(
    job: JobRecord, status: str, *, colour: discord.Colour = COLOR_WORKING, locale: str | None = None
) -> discord.Embed:
    """The embed every state of a job shares: prompt, model, price, options and a status line.

    `locale` defaults to the job's (its member's); a message posted for the whole channel passes the server's.
    """
    locale = locale or job.locale
    embed = discord.Embed(title=text("embed.title", locale), colour=colour)
    embed.add_field(name=text("embed.prompt", locale), value=_clip(job.prompt, PROMPT_LIMIT), inline=False)
    embed.add_field(name=text("embed.model", locale), value=f"`{job.model}`", inline=True)
    embed.add_field(
        name=text("embed.price", locale),
        value=text("embed.price_value", locale, total=job.hold_amount, count=job.count, price=job.price),
        inline=True,
    )
    if job.options:
        options = " · ".join(f"{name}: {value}" for name, value in sorted(job.options.items()))
        embed.add_field(name=text("embed.options", locale), value=_clip(options, 1024), inline=False)
    if job.style:
        embed.add_field(name=text("embed.style", locale), value=f"`{job.style}`", inline=True)
    embed.add_field(name=text("embed.status", locale), value=_clip(status, 1024), inline=False)
    return embed


def progress_embed(job: JobRecord, progress: Progress, locale: str | None = None) -> discord.Embed:
    locale = locale or job.locale
    return job_embed(job, progress_line(progress, locale), locale=locale)


def result_embeds(
    job: JobRecord,
    filenames: list[str],
    *,
    charged: int,
    available_after: int | None,
    locale: str | None = None,
    origin_url: str | None = None,
) -> list[discord.Embed]:
    """One embed per image (Discord shows each `attachment://` image); the first carries the details."""
    locale = locale or job.locale
    available = text("credits.unlimited", locale) if available_after is None else available_after
    status = text("embed.charged", locale, charged=charged, available=available)
    if len(filenames) < job.count:
        status += "\n" + text("embed.partial", locale, delivered=len(filenames), requested=job.count)
    first = job_embed(job, f"{text('status.done', locale)} · {status}", colour=COLOR_DONE, locale=locale)
    if origin_url is not None:
        first.add_field(name=text("embed.remix_of", locale), value=origin_url, inline=False)
    if job.spoiler:
        return [first]  # an embed would show the images unblurred: spoilers stay plain attachments
    embeds = [first] + [discord.Embed(colour=COLOR_DONE) for _ in filenames[1:]]
    for embed, filename in zip(embeds, filenames, strict=False):
        embed.set_image(url=f"attachment://{filename}")
    return embeds


def failure_embed(job: JobRecord, error: BotError, locale: str | None = None) -> discord.Embed:
    """The embed shown when a job ends without images; its credits were released."""
    locale = locale or job.locale
    colour = COLOR_REFUSED if isinstance(error, ContentPolicyError) else COLOR_FAILED
    status_key = "status.cancelled" if error.message_key == "error.cancelled" else "status.failed"
    line = f"{text(status_key, locale)} · {error_text(error, locale)}"
    return job_embed(job, line, colour=colour, locale=locale)
