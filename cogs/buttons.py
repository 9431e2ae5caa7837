"""Buttons on job replies. Their custom_id carries the job id and their state is read from the store, so
they keep working after a restart (discord.py dynamic items are matched by a template, not by a view
kept in memory)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord

from bot.discord_app import NO_MENTIONS, locale_of, send_ephemeral
from bot.errors import BotError, JobNotFoundError, NotJobOwnerError
from bot.messages import error_text, text
from bot.store.records import JobRecord

log = logging.getLogger(__name__)

JOB_ID = r"(?P<job>[0-9a-f]{32})"


def is_admin(interaction: discord.Interaction[Any]) -> bool:
    """Whether the member may manage the server (admins may act on anyone's job)."""
    permissions = getattr(interaction.user, "guild_permissions", None)
    return bool(permissions and permissions.manage_guild)


async def answer_errors(interaction: discord.Interaction[Any], action: Callable[[], Awaitable[None]]) -> None:
    """Run a component callback, turning a domain error into one ephemeral message (as the tree does)."""
    try:
        await action()
    except BotError as error:
        await send_ephemeral(interaction, error_text(error, locale_of(interaction)))
    except Exception:
        log.exception("button callback failed")
        await send_ephemeral(interaction, text("error.internal", locale_of(interaction)))


class CancelButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"imagine:cancel:" + JOB_ID):
    """Cancel a queued or running job; its credits are released."""

    def __init__(self, job_id: str, locale: str = "en") -> None:
        super().__init__(
            discord.ui.Button(
                label=text("button.cancel", locale),
                style=discord.ButtonStyle.secondary,
                custom_id=f"imagine:cancel:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: Any, /
    ) -> CancelButton:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        async def cancel() -> None:
            jobs = interaction.client.services.jobs  # type: ignore[attr-defined]
            job = await jobs.cancel(self.job_id, interaction.user.id, is_admin=is_admin(interaction))
            if job.status != "cancelled":
                await send_ephemeral(interaction, text("job.already_finished", locale_of(interaction)))
            elif not interaction.response.is_done():
                await interaction.response.defer()  # the reply itself now says "Cancelled"

        await answer_errors(interaction, cancel)


class DeleteButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"imagine:delete:" + JOB_ID):
    """Delete a result message: the member who asked, or an admin."""

    def __init__(self, job_id: str, locale: str = "en") -> None:
        super().__init__(
            discord.ui.Button(
                label=text("button.delete", locale),
                style=discord.ButtonStyle.danger,
                custom_id=f"imagine:delete:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: Any, /
    ) -> DeleteButton:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        async def delete() -> None:
            job = await _owned_job(interaction, self.job_id)
            await interaction.response.defer()
            if interaction.message is not None:
                await interaction.message.delete()
            log.info("job id=%s result deleted by user=%s", job.id, interaction.user.id)

        await answer_errors(interaction, delete)


class RerollButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"imagine:reroll:" + JOB_ID):
    """Run the same prompt and options again, charged again through the normal path."""

    def __init__(self, job_id: str, locale: str = "en") -> None:
        super().__init__(
            discord.ui.Button(
                label=text("button.reroll", locale),
                style=discord.ButtonStyle.primary,
                emoji="🔁",
                custom_id=f"imagine:reroll:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: Any, /
    ) -> RerollButton:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        from cogs.launch import ImagineRequest, launch_job

        async def reroll() -> None:
            store = interaction.client.services.store  # type: ignore[attr-defined]
            job = await store.get_job(self.job_id)
            if job is None:
                raise JobNotFoundError()
            request = ImagineRequest(prompt=job.prompt, model=job.model, count=job.count, options=dict(job.options))
            await launch_job(interaction, request)

        await answer_errors(interaction, reroll)


async def _owned_job(interaction: discord.Interaction[Any], job_id: str) -> JobRecord:
    store = interaction.client.services.store  # type: ignore[attr-defined]
    job = await store.get_job(job_id)
    if job is None:
        raise JobNotFoundError()
    if job.user_id != interaction.user.id and not is_admin(interaction):
        raise NotJobOwnerError()
    return job


def running_view(job: JobRecord) -> discord.ui.View:
    """Buttons while a job is queued or running."""
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job.id, job.locale))
    return view


def result_view(job: JobRecord) -> discord.ui.View:
    """Buttons under delivered images."""
    view = discord.ui.View(timeout=None)
    view.add_item(RerollButton(job.id, job.locale))
    view.add_item(DeleteButton(job.id, job.locale))
    return view


DYNAMIC_ITEMS = (CancelButton, DeleteButton, RerollButton)

__all__ = ["DYNAMIC_ITEMS", "NO_MENTIONS", "answer_errors", "is_admin", "result_view", "running_view"]
