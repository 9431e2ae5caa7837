"""The buttons under a result: each once, whatever loaded the extensions before."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import discord
from discord.ext import commands

from cogs.buttons import result_view


async def _load_details() -> commands.Bot:
    bot = commands.Bot(command_prefix="!", intents=discord.Intents.none())
    bot.services = SimpleNamespace()  # type: ignore[attr-defined]  # kept as a reference at load time
    await bot.load_extension("cogs.details")
    return bot


async def test_loading_the_details_extension_again_never_doubles_the_result_buttons() -> None:
    # discord.py builds a fresh module on every load: a second bot (a test, a reload) must not add its
    # makers next to the first one's, or Discord refuses the message for its duplicate custom ids.
    await _load_details()
    await _load_details()
    job: Any = SimpleNamespace(id="a" * 32, locale="en")
    # Each child is a DynamicItem around its button.
    labels = [getattr(child, "item", child).label for child in result_view(job).children]
    assert labels == ["Re-roll", "Remix", "Details", "Delete"]
