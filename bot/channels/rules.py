"""Where images may be made on a server. No rule means everywhere; a thread follows its parent channel."""

from __future__ import annotations

from bot.errors import ChannelNotAllowedError
from bot.store.base import Store


async def check_channel(store: Store, guild_id: int, channel_id: int, parent_id: int | None = None) -> None:
    """Raise `ChannelNotAllowedError` (naming the allowed channels) when the server limits /imagine elsewhere."""
    allowed = await store.allowed_channels(guild_id)
    if not allowed or channel_id in allowed or (parent_id is not None and parent_id in allowed):
        return
    raise ChannelNotAllowedError(channels=", ".join(f"<#{channel}>" for channel in allowed))
