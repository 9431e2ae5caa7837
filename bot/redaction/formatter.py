"""A log formatter that scrubs the finished line, so message, arguments, extra fields, exception and stack
are all covered, whichever library logged them and at whatever level."""

from __future__ import annotations

import logging

from bot.redaction.patterns import Redactor


class RedactingFormatter(logging.Formatter):
    """Formats with `inner`, then redacts the whole output."""

    def __init__(self, inner: logging.Formatter, redactor: Redactor) -> None:
        super().__init__()
        self._inner = inner
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(self._inner.format(record))
