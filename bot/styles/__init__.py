"""Server styles: named prompt templates admins define and members pick with /imagine style:."""

from bot.styles.templates import PLACEHOLDER, apply_style, check_style

__all__ = ["PLACEHOLDER", "apply_style", "check_style"]
