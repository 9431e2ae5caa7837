"""Fixtures for end-to-end tests: both fakes on loopback and the bot run through its production start-up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.harness import World
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_gateway import FakeGateway


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with FakeDiscord() as fd, FakeGateway() as gw:
        w = World(fd=fd, gw=gw, tmp=tmp_path)
        try:
            yield w
        finally:
            await w.stop()


@pytest.fixture
async def running(world: World) -> AsyncIterator[World]:
    await world.start()
    yield world
