"""Builders for test data, so every test states only what matters to it."""

from __future__ import annotations

import uuid
from typing import Any

from bot.store.records import NewJob


def make_job(**overrides: Any) -> NewJob:
    """A valid `NewJob` (one 5-credit sync image in guild 1, channel 2, by user 100), with `overrides`."""
    fields: dict[str, Any] = dict(
        id=uuid.uuid4().hex,
        guild_id=1,
        channel_id=2,
        user_id=100,
        model="model-a",
        prompt="a red fox",
        count=1,
        price=5,
        params={},
        options={},
        mode="sync",
    )
    fields.update(overrides)
    return NewJob(**fields)
