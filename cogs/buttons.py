"""Buttons on job replies. Their custom_id carries the job id and their state is read from the store, so
they keep working after a restart (discord.py dynamic items are matched by a template, not by a view
kept in memory)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Look:
    label_key: str
    style: discord.ButtonStyle
    emoji: str | None = None


LOOKS = {
    "cancel": _Look("button.cancel", discord.ButtonStyle.secondary),
    "reroll": _Look("button.reroll", discord.ButtonStyle.primary, "🔁"),
    "delete": _Look("button.delete", discord.ButtonStyle.danger),
}


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imagine:(?P<action>cancel|reroll|delete):" + JOB_ID,
):
    """A button on a job's reply: Cancel (queued or running), Re-roll and Delete (results)."""

    def __init__(self, action: str, job_id: str, locale: str = "en") -> None:
        look = LOOKS[action]
        super().__init__(
            discord.ui.Button(
                label=text(look.label_key, locale),
                style=look.style,
                emoji=look.emoji,
                custom_id=f"imagine:{action}:{job_id}",
            )
        )
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: Any, /
    ) -> JobButton:
        return cls(match["action"], match["job"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        actions = {"cancel": self._cancel, "reroll": self._reroll, "delete": self._delete}
        await answer_errors(interaction, lambda: actions[self.action](interaction))

    async def _cancel(self, interaction: discord.Interaction[Any]) -> None:
        """Cancel a queued or running job; its credits are released and its reply says so.

        Acknowledged before the work: stopping a job waits for its edits, which Discord may be
        rate-limiting, and the click must be answered within 3 s whatever happens. Only the ownership
        check (one read) comes first, so that a refusal stays the click's one ephemeral answer.
        """
        await _owned_job(interaction, self.job_id)
        await interaction.response.defer()
        jobs = interaction.client.services.jobs  # type: ignore[attr-defined]
        job = await jobs.cancel(self.job_id, interaction.user.id, is_admin=is_admin(interaction))
        if job.status != "cancelled" and not job.cancel_requested:
            await send_ephemeral(interaction, text("job.already_finished", locale_of(interaction)))

    async def _delete(self, interaction: discord.Interaction[Any]) -> None:
        """Delete a result message: the member who asked, or an admin."""
        job = await _owned_job(interaction, self.job_id)
        await interaction.response.defer()
        if interaction.message is not None:
            await interaction.message.delete()
        log.info("job id=%s result deleted by user=%s", job.id, interaction.user.id)

    async def _reroll(self, interaction: discord.Interaction[Any]) -> None:
        """Run the same prompt and options again, charged again through the normal path."""
        from cogs.launch import ImagineRequest, launch_job

        store = interaction.client.services.store  # type: ignore[attr-defined]
        job = await store.get_job(self.job_id)
        if job is None:
            raise JobNotFoundError()
        request = ImagineRequest(
            prompt=job.prompt,
            model=job.model,
            count=job.count,
            options=dict(job.options),
            applied_style=job.style,
            spoiler=job.spoiler,
        )
        await launch_job(interaction, request)


async def _owned_job(interaction: discord.Interaction[Any], job_id: str) -> JobRecord:
    store = interaction.client.services.store  # type: ignore[attr-defined]
    job = await store.get_job(job_id)
    if job is None:
        raise JobNotFoundError()
    if job.user_id != interaction.user.id and not is_admin(interaction):
        raise NotJobOwnerError()
    return job


def running_view(job: JobRecord, locale: str | None = None) -> discord.ui.View:
    """Buttons while a job is queued or running (labels in `locale`, by default the job's)."""
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("cancel", job.id, locale or job.locale))
    return view


# More buttons under results (Remix, Details), registered by the cogs that own them: they depend on this
# module, never the reverse. Each maker takes the job and the language of the labels. Keyed by action, so
# an extension loaded again (discord.py builds a fresh module each time) replaces its makers, never adds more.
RESULT_BUTTONS: dict[str, Callable[[JobRecord, str], discord.ui.Item[Any]]] = {}


def result_view(job: JobRecord, locale: str | None = None) -> discord.ui.View:
    """Buttons under delivered images (labels in `locale`, by default the job's)."""
    language = locale or job.locale
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("reroll", job.id, language))
    for make in RESULT_BUTTONS.values():
        view.add_item(make(job, language))
    view.add_item(JobButton("delete", job.id, language))
    return view


DYNAMIC_ITEMS = (JobButton,)

__all__ = [
    "DYNAMIC_ITEMS",
    "NO_MENTIONS",
    "RESULT_BUTTONS",
    "answer_errors",
    "is_admin",
    "result_view",
    "running_view",
]
