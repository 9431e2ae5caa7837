"""AutoMod keyword rules as Discord defines them, matched against a prompt.

Keyword semantics (Discord's docs, "Keyword Matching Strategies"), all case-insensitive:
`cat` a whole word, `cat*` a word starting with it, `*cat` a word ending with it, `*cat*` anywhere.
Regex patterns run on RE2 (linear time, as for the blocklist), and a match that falls inside words
an allow-list entry matches does not count.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import re2

from bot.moderation.blocklist import Matcher

KEYWORD_TRIGGER = 1  # trigger_type KEYWORD; presets, spam and mention rules are not about prompt text
MESSAGE_SEND = 1  # event_type
_RE2_MEMORY = 1 << 20


def compile_keyword(keyword: str) -> re.Pattern[str] | None:
    """A keyword with Discord's wildcards as a safe regex (escaped literal with word guards)."""
    keyword = keyword.strip()
    starts_free = keyword.startswith("*")
    ends_free = keyword.endswith("*")
    core = keyword.strip("*").strip()
    if not core:
        return None
    body = r"\s+".join(re.escape(part) for part in core.split())
    prefix = "" if starts_free else r"(?<!\w)"
    suffix = "" if ends_free else r"(?!\w)"
    return re.compile(prefix + body + suffix, re.IGNORECASE)


def compile_regex(pattern: str) -> Matcher | None:
    """An AutoMod regex on RE2; one Discord accepted but RE2 cannot compile is skipped."""
    options = re2.Options()
    options.log_errors = False
    options.max_mem = _RE2_MEMORY
    try:
        return re2.compile(pattern, options)
    except re2.error:
        return None


def _spans(matcher: Any, text: str) -> Iterator[tuple[int, int]]:
    for match in matcher.finditer(text):
        start, end = match.span()
        if end > start:
            yield start, end


def _word_around(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen a match to the whole words it touches (an allow-list entry speaks of words)."""
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
        start -= 1
    while end < len(text) and (text[end].isalnum() or text[end] == "_"):
        end += 1
    return start, end


@dataclass(frozen=True)
class KeywordRule:
    """One enabled keyword rule of a server."""

    id: int
    name: str
    keywords: list[re.Pattern[str]] = field(default_factory=list)
    regexes: list[Matcher] = field(default_factory=list)
    allow: list[re.Pattern[str]] = field(default_factory=list)
    exempt_roles: frozenset[int] = frozenset()
    exempt_channels: frozenset[int] = frozenset()

    def applies_to(self, role_ids: Iterable[int], channel_ids: Iterable[int]) -> bool:
        return not (self.exempt_roles & set(role_ids)) and not (self.exempt_channels & set(channel_ids))

    def matches(self, text: str) -> bool:
        """Whether `text` triggers this rule: a keyword or regex match not covered by the allow list."""
        for matcher in (*self.keywords, *self.regexes):
            for start, end in _spans(matcher, text):
                word_start, word_end = _word_around(text, start, end)
                words = text[word_start:word_end]
                if not any(allowed.fullmatch(words) or allowed.search(words) for allowed in self.allow):
                    return True
        return False


def parse_rules(payload: list[dict[str, Any]]) -> list[KeywordRule]:
    """The enabled message keyword rules in Discord's `GET /guilds/{id}/auto-moderation/rules` answer."""
    rules: list[KeywordRule] = []
    for raw in payload:
        if not raw.get("enabled") or raw.get("trigger_type") != KEYWORD_TRIGGER:
            continue
        if raw.get("event_type", MESSAGE_SEND) != MESSAGE_SEND:
            continue
        meta = raw.get("trigger_metadata") or {}
        keywords = [p for p in map(compile_keyword, meta.get("keyword_filter") or []) if p is not None]
        regexes = [m for m in map(compile_regex, meta.get("regex_patterns") or []) if m is not None]
        allow = [p for p in map(compile_keyword, meta.get("allow_list") or []) if p is not None]
        rules.append(
            KeywordRule(
                id=int(raw.get("id", 0)),
                name=str(raw.get("name", "")),
                keywords=keywords,
                regexes=regexes,
                allow=allow,
                exempt_roles=frozenset(int(r) for r in raw.get("exempt_roles") or []),
                exempt_channels=frozenset(int(c) for c in raw.get("exempt_channels") or []),
            )
        )
    return rules
