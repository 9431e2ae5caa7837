"""The price quote: above the server's threshold, the member confirms the cost before anything is held.

A quote holds nothing, so it lives only in memory: when it times out the message says so and the member
runs /imagine again (after a restart its buttons no longer answer). Its job id is minted with the quote,
so a confirmation is idempotent: a second click (two arriving together) is answered "already confirmed"
and holds nothing, and even a duplicate that got through could not hold twice under the same job id.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import replace
from typing import Any

import discord

from bot.discord_app import locale_of, send_ephemeral
from bot.messages import text
from cogs.buttons import answer_errors
from cogs.launch import ImagineRequest, launch_job

QUOTE_TIMEOUT = 300.0


class QuoteView(discord.ui.View):
    """Confirm / Cancel under an ephemeral quote."""

    def __init__(self, request: ImagineRequest, *, owner_id: int, locale: str) -> None:
        super().__init__(timeout=QUOTE_TIMEOUT)
        self.request = request if request.job_id else replace(request, job_id=uuid.uuid4().hex)
        self._confirmed = False
        self.owner_id = owner_id
        self.locale = locale
        self.origin: discord.Interaction[Any] | None = None  # set by the sender, to edit on timeout
        self.confirm.label = text("button.confirm", locale)
        self.cancel.label = text("button.cancel", locale)

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        return interaction.user.id == self.owner_id

    async def on_timeout(self) -> None:
        if self.origin is not None:
            with contextlib.suppress(discord.HTTPException):
                await self.origin.edit_original_response(content=text("quote.expired", self.locale), view=None)

    @discord.ui.button(style=discord.ButtonStyle.success)
    async def confirm(self, interaction: discord.Interaction[Any], button: discord.ui.Button[Any]) -> None:
        # Checked and set with no await between: of two clicks arriving together, exactly one goes on.
        if self._confirmed:
            await send_ephemeral(interaction, text("quote.already_confirmed", locale_of(interaction)))
            return
        self._confirmed = True

        async def go() -> None:
            await launch_job(interaction, self.request, confirmed=True)

        await answer_errors(interaction, go)
        self.stop()

    @discord.ui.button(style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction[Any], button: discord.ui.Button[Any]) -> None:
        self.stop()
        await interaction.response.edit_message(content=text("quote.cancelled", locale_of(interaction)), view=None)
