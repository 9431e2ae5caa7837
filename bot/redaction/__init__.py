"""Scrubbing secrets out of text: Discord interaction and bot tokens, webhook URLs, and configured secrets."""

from bot.redaction.formatter import RedactingFormatter
from bot.redaction.patterns import REDACTED, Redactor

__all__ = ["REDACTED", "RedactingFormatter", "Redactor"]
