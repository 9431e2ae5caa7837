"""Channel rules: the channels where a server allows /imagine, re-roll and remix."""

from bot.channels.rules import check_channel

__all__ = ["check_channel"]
