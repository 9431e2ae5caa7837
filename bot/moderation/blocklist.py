"""Per-server blocked words and patterns, checked before anything is spent.

Admins type these patterns, and every prompt on every server runs through them on the one event loop, so a
pattern must never be able to stall the bot: every term runs on RE2 (google-re2), whose matching time is
linear in the prompt's length whatever the pattern. Python's `re` would let one admin's `(a+)+$` freeze the
bot for everyone.

A server's terms are compiled once into one RE2 program (an alternation, searched by RE2's DFA in one pass
over the prompt) and cached until the server's blocklist changes: recompiling hundreds of terms for every
prompt took a tenth of a second of the loop. Plain words match whole words in any script: RE2 has no
lookarounds and its `\\b` knows only ASCII, so the word edges are spelled as "start or a non-word character"
and "a non-word character or end", which is the same test for "is there a match".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import re2

from bot.errors import BlockedPromptError, InvalidValueError
from bot.i18n import Phrase
from bot.store.base import Store
from bot.store.records import BlockedTerm

log = logging.getLogger(__name__)

MAX_PATTERN_LENGTH = 200
_TERM_MEMORY = 1 << 20  # bytes one compiled term may use; bigger patterns are refused
_LIST_MEMORY = 16 << 20  # bytes one compiled list may use; a list that needs more is split in parts

_NOT_WORD = r"[^\pL\pN_]"  # Python's \w is letters, numbers and _
# Every character Python's str.split() splits on, so that words an admin typed apart match apart.
_SPACE = "[" + "".join(f"\\x{{{c:x}}}" for c in range(0x3001) if chr(c).isspace()) + "]+"


class Matcher(Protocol):
    def search(self, text: str) -> object | None: ...


def _options(max_mem: int) -> re2.Options:
    options = re2.Options()
    options.case_sensitive = False
    options.never_capture = True  # only "is there a match" is asked: groups would force the slow engines
    options.log_errors = False  # a bad pattern is the admin's typo, not an operator's log line
    options.max_mem = max_mem
    return options


def _words_source(pattern: str) -> str:
    return _SPACE.join(re2.escape(word) for word in pattern.split())


def _list_source(terms: tuple[BlockedTerm, ...]) -> str:
    """One RE2 source for `terms`, each self-contained, joined by `|`.

    The plain words share one pair of word edges: `edge (a|b) edge` matches exactly where `edge a edge` or
    `edge b edge` does, and the Unicode classes of the edges, copied once per word, would make the program
    hundreds of times larger (a second to compile 500 terms, milliseconds to search).
    """
    words = [_words_source(t.pattern) for t in terms if not t.is_regex]
    regexes = [f"(?:{t.pattern.strip()})" for t in terms if t.is_regex]
    if words:
        regexes.insert(0, f"(?:(?:^|{_NOT_WORD})(?:{'|'.join(words)})(?:{_NOT_WORD}|$))")
    return "|".join(regexes)


def compile_term(pattern: str, is_regex: bool) -> Matcher:
    """Compile a blocked term alone: plain words match as whole words, case-insensitively; regexes use RE2.

    Raises `InvalidValueError` for an empty, overlong or invalid pattern (RE2 has no backreferences or
    lookarounds), or one that does not stand alone (an unterminated `\\Q`).
    """
    pattern = pattern.strip()
    if not pattern or len(pattern) > MAX_PATTERN_LENGTH:
        raise InvalidValueError(
            option=Phrase("field.pattern"),
            value=pattern[:50],
            allowed=Phrase("allowed.pattern_length", {"max": MAX_PATTERN_LENGTH}),
        )
    try:
        term = BlockedTerm(id=0, guild_id=0, pattern=pattern, is_regex=is_regex, created_by=0, created_at=0)
        return re2.compile(_list_source((term,)), _options(_TERM_MEMORY))
    except re2.error:
        raise InvalidValueError(
            option=Phrase("field.pattern"),
            value=pattern[:50],
            allowed=Phrase("allowed.re2"),
        ) from None


@dataclass(frozen=True)
class _Part:
    program: Matcher
    terms: tuple[BlockedTerm, ...]


@dataclass(frozen=True)
class Blocklist:
    """A server's terms, compiled: normally one RE2 program for the whole list."""

    parts: tuple[_Part, ...] = field(default_factory=tuple)

    @classmethod
    def compile(cls, terms: list[BlockedTerm]) -> Blocklist:
        """Compile `terms`. A term that no longer compiles (stored by an older version) is logged and skipped."""
        return cls(tuple(_compile_parts(tuple(terms))))

    def matches(self, prompt: str) -> bool:
        """Whether any term matches `prompt`."""
        return any(part.program.search(prompt) is not None for part in self.parts)

    def first_match(self, prompt: str) -> BlockedTerm | None:
        """The first term (in list order) that matches `prompt`, if any."""
        for part in self.parts:
            if part.program.search(prompt) is not None:
                for term in part.terms:
                    try:
                        if compile_term(term.pattern, term.is_regex).search(prompt) is not None:
                            return term
                    except InvalidValueError:
                        continue
        return None


def _compile_parts(terms: tuple[BlockedTerm, ...]) -> list[_Part]:
    """As few programs as fit in `_LIST_MEMORY`: the whole list, else its halves, recursively."""
    if not terms:
        return []
    try:
        return [_Part(re2.compile(_list_source(terms), _options(_LIST_MEMORY)), terms)]
    except re2.error:
        if len(terms) == 1:
            log.warning("blocked term #%s of server %s cannot be compiled; skipped", terms[0].id, terms[0].guild_id)
            return []
    half = len(terms) // 2
    return _compile_parts(terms[:half]) + _compile_parts(terms[half:])


def find_blocked(prompt: str, terms: list[BlockedTerm]) -> BlockedTerm | None:
    """The first of `terms` that matches `prompt`, if any (compiles them: for one-off checks)."""
    return Blocklist.compile(terms).first_match(prompt)


class Moderator:
    """Checks prompts against a server's blocked terms, read from the store so that every process agrees.

    The compiled list is cached per server and tagged with the store's blocklist version, read (one row)
    on every check, so a change made by any process is seen by the next prompt.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[int, tuple[int, Blocklist]] = {}

    async def check(self, guild_id: int, prompt: str) -> None:
        """Raise `BlockedPromptError` when `prompt` contains a blocked term of the server."""
        if (await self.blocklist(guild_id)).matches(prompt):
            raise BlockedPromptError()

    async def blocklist(self, guild_id: int) -> Blocklist:
        """The server's compiled list, recompiled only when its version changed."""
        version = await self._store.blocklist_version(guild_id)
        cached = self._cache.get(guild_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        # Read after the version: the terms are at least that new, so a tag is never newer than its list
        # (at worst an older tag makes the next check compile once more).
        compiled = Blocklist.compile(await self._store.blocked_terms(guild_id))
        self._cache[guild_id] = (version, compiled)
        return compiled
