"""Remix: a result's request, shown as editable text, and read back."""

from bot.remix.options import format_options, parse_options

__all__ = ["format_options", "parse_options"]
