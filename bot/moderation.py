"""Per-server blocked words and patterns, checked before anything is spent.

Admins type these patterns, and every prompt on every server runs through them on the one event loop, so a
pattern must never be able to stall the bot: regular expressions run on RE2 (google-re2), whose matching
time is linear in the prompt's length whatever the pattern. Python's `re` would let one admin's `(a+)+$`
freeze the bot for everyone. Plain words are escaped literals, safe under `re`, and match whole words in
any script (RE2's `\\b` only knows ASCII word characters).
"""

from __future__ import annotations

import re
from typing import Protocol

import re2

from bot.errors import BlockedPromptError, InvalidValueError
from bot.store.base import Store
from bot.store.records import BlockedTerm

MAX_PATTERN_LENGTH = 200
_RE2_MEMORY = 1 << 20  # bytes a compiled pattern may use; bigger patterns are refused


class Matcher(Protocol):
    def search(self, text: str) -> object | None: ...


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # a bad pattern is the admin's typo, not an operator's log line
    options.max_mem = _RE2_MEMORY
    return options


def compile_term(pattern: str, is_regex: bool) -> Matcher:
    """Compile a blocked term: plain words match as whole words, case-insensitively; regexes use RE2.

    Raises `InvalidValueError` for an empty, overlong or invalid pattern (RE2 has no backreferences or
    lookarounds).
    """
    pattern = pattern.strip()
    if not pattern or len(pattern) > MAX_PATTERN_LENGTH:
        raise InvalidValueError(option="pattern", value=pattern[:50], allowed=f"1–{MAX_PATTERN_LENGTH} characters")
    if not is_regex:
        words = r"\s+".join(re.escape(word) for word in pattern.split())
        return re.compile(r"(?<!\w)" + words + r"(?!\w)", re.IGNORECASE)
    try:
        return re2.compile(pattern, _re2_options())
    except re2.error:
        raise InvalidValueError(
            option="pattern",
            value=pattern[:50],
            allowed="a regular expression RE2 accepts (no backreferences or lookarounds)",
        ) from None


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
