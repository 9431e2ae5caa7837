"""A member's own preferences (saved /imagine defaults) and their roles as jobs see them."""

from bot.members.defaults import DEFAULT_KEYS, apply_defaults, clean_defaults
from bot.members.roles import MemberRoles

__all__ = ["DEFAULT_KEYS", "MemberRoles", "apply_defaults", "clean_defaults"]
