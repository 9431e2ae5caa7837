"""Per-server blocked words and patterns, checked before anything is spent."""

from __future__ import annotations

import re

from bot.errors import BlockedPromptError, InvalidValueError
from bot.store.base import Store
from bot.store.records import BlockedTerm

MAX_PATTERN_LENGTH = 200


def compile_term(pattern: str, is_regex: bool) -> re.Pattern[str]:
    """Compile a blocked term: plain words match as whole words, case-insensitively.

    Raises `InvalidValueError` for an empty, overlong or invalid pattern.
    """
    pattern = pattern.strip()
    if not pattern or len(pattern) > MAX_PATTERN_LENGTH:
        raise InvalidValueError(option="pattern", value=pattern[:50], allowed=f"1–{MAX_PATTERN_LENGTH} characters")
    source = pattern if is_regex else r"(?<!\w)" + re.escape(pattern) + r"(?!\w)"
    try:
        return re.compile(source, re.IGNORECASE)
    except re.error:
        raise InvalidValueError(option="pattern", value=pattern[:50], allowed="a valid regular expression") from None


def find_blocked(prompt: str, terms: list[BlockedTerm]) -> BlockedTerm | None:
    """The first term that matches `prompt`, if any."""
    for term in terms:
        if compile_term(term.pattern, term.is_regex).search(prompt):
            return term
    return None


class Moderator:
    """Checks prompts against a server's blocked terms (read from the store, so every process agrees)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def check(self, guild_id: int, prompt: str) -> None:
        """Raise `BlockedPromptError` when `prompt` contains a blocked term of the server."""
        terms = await self._store.blocked_terms(guild_id)
        if terms and find_blocked(prompt, terms) is not None:
            raise BlockedPromptError()
