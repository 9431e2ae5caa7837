"""A member's own preferences: saved /imagine defaults."""

from bot.members.defaults import DEFAULT_KEYS, apply_defaults, clean_defaults

__all__ = ["DEFAULT_KEYS", "apply_defaults", "clean_defaults"]
