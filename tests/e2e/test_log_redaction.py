"""At LOG_LEVEL=DEBUG, with every library's logs captured, no interaction token, bot token or API key is
written: /imagine, its progress edits, a re-roll and a delete through the fake Discord."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from bot.logs import configure_logging
from bot.redaction import REDACTED
from tests.e2e.harness import WAIT, World
from tests.e2e.test_resilience import ASYNC_MODEL, button
from tests.fakes.fake_discord import DEFAULT_TOKEN


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """The production logging set-up at DEBUG, written to a buffer; discord.py's gateway dumps included."""
    root = logging.getLogger()
    gateway = logging.getLogger("discord.gateway")
    saved = root.handlers[:], root.level, gateway.level
    out = io.StringIO()
    yield out
    root.handlers[:], level, gateway_level = saved
    root.setLevel(level)
    gateway.setLevel(gateway_level)


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_no_token_reaches_the_debug_log(world: World, debug_log: io.StringIO, fmt: str) -> None:
    configure_logging("DEBUG", fmt, secrets=(DEFAULT_TOKEN, world.gw.api_key), stream=debug_log)
    logging.getLogger("discord.gateway").setLevel(logging.DEBUG)  # more than production logs: the dumps too
    await world.start(log_level="DEBUG")
    fi = await world.imagine("a lantern festival", model=ASYNC_MODEL)
    message = await world.finished(fi)
    reroll = await world.fd.click_button(message, button(message, "reroll"), user=world.fd.alice)
    await world.finished(reroll)
    delete = await world.fd.click_button(message, button(message, "delete"), user=world.fd.alice)
    await delete.wait_for_callback(WAIT)
    await world.fd.wait_for(lambda: message.deleted, WAIT, what="message deleted")
    await world.stop()

    text = debug_log.getvalue()
    tokens = [interaction.token for interaction in world.fd.interactions]
    assert len(tokens) == 3 and all(len(token) > 100 for token in tokens)
    # The log really holds what leaked before: discord.py's requests and gateway events, aiosqlite's calls.
    for logger in ("discord.http", "discord.gateway", "aiosqlite"):
        assert logger in text, f"nothing logged by {logger}"
    for token in tokens:
        assert token not in text and token[:40] not in text
    assert DEFAULT_TOKEN not in text and world.gw.api_key not in text
    assert REDACTED in text
