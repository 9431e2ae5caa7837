"""Logging to stdout, as text or one JSON object per line, with secrets scrubbed from every line."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO

from bot.ops.logctx import JobContextFilter
from bot.redaction import RedactingFormatter, Redactor

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update({k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


def configure_logging(level: str, fmt: str, secrets: Iterable[str] = (), *, stream: IO[str] | None = None) -> None:
    """Send every log line to `stream` (stdout) in `fmt` ("text" or "json"), with secrets scrubbed.

    Scrubbing is done on the formatted line (see `bot.redaction`): `secrets` literally, and interaction
    tokens, bot tokens and webhook URLs by their shape, whoever logged them.
    """
    handler = logging.StreamHandler(stream or sys.stdout)
    inner = (
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    handler.addFilter(JobContextFilter())  # job id, server id and model on every line about a job
    handler.setFormatter(RedactingFormatter(inner, Redactor(secrets)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("discord.gateway").setLevel(max(root.level, logging.INFO))
