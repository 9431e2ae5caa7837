"""What a secret looks like, so that one never reaches a log even when no one thought to pass it in.

Interaction tokens are base64 of ``interaction:<id>:<random>`` (so they start ``aW50ZXJhY3Rpb246``) and are
about 100 characters or more; they travel in webhook and callback URLs (discord.py logs every request's
URL at DEBUG), in gateway payloads, and in the job rows whose parameters aiosqlite logs. Bot tokens are
three dot-separated base64 parts. Anything else secret (the configured bot token and API key) is passed in
literally.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"

# Secrets shorter than this are not scrubbed literally: replacing "abc" everywhere would garble logs, and a
# real key is never that short.
_MIN_LITERAL = 8

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # The token segment of /webhooks/<app_id>/<token> and /interactions/<id>/<token>, whatever its shape.
    (re.compile(r"(/(?:webhooks|interactions)/\d+/)[^/\s?#'\"]+"), r"\1" + REDACTED),
    # An interaction token anywhere else (gateway dumps, SQL parameters, reprs).
    (re.compile(r"aW50ZXJhY3Rpb246[A-Za-z0-9+/=_\-.]*"), REDACTED),
    # A Discord bot token: base64 user id, base64 timestamp, HMAC.
    (re.compile(r"\b[MNO][A-Za-z\d_-]{23,27}\.[A-Za-z\d_-]{6}\.[A-Za-z\d_-]{27,40}\b"), REDACTED),
    # Credentials in Authorization headers and their reprs.
    (re.compile(r"""(?i)(authorization['"]?\s*[:=]\s*['"]?(?:bot|bearer)\s+)[^\s'",}]+"""), r"\1" + REDACTED),
    # Any other run of 100+ token characters: an interaction token in a shape Discord may adopt later.
    (re.compile(r"[A-Za-z0-9_\-]{100,}"), REDACTED),
)


class Redactor:
    """Replaces every configured secret and every token-shaped string in a text with `[redacted]`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        literals = sorted({s for s in secrets if len(s) >= _MIN_LITERAL}, key=len, reverse=True)
        self._literals = re.compile("|".join(map(re.escape, literals))) if literals else None

    def __call__(self, text: str) -> str:
        """`text` with every secret replaced."""
        if self._literals is not None:
            text = self._literals.sub(REDACTED, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text
