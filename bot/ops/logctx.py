"""Which job a log line is about, as fields of every record logged inside that job's work (contextvars).

`LOG_FORMAT=json` then carries `job_id`, `guild_id` and `model` on each such line, so an operator can search
one job's whole life. The prompt is never put here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_JOB: ContextVar[dict[str, Any] | None] = ContextVar("imagine_job", default=None)


@contextlib.contextmanager
def job_context(job_id: str, guild_id: int, model: str) -> Iterator[None]:
    """Tag every log line inside the block (and in tasks it creates) with this job."""
    token = _JOB.set({"job_id": job_id, "guild_id": guild_id, "model": model})
    try:
        yield
    finally:
        _JOB.reset(token)


def set_job_context(job_id: str, guild_id: int, model: str) -> None:
    """Tag the rest of the current task (a job's own task) with this job."""
    _JOB.set({"job_id": job_id, "guild_id": guild_id, "model": model})


class JobContextFilter(logging.Filter):
    """Adds the current job's fields to a record, unless the call already passed them in `extra=`."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _JOB.get()
        if fields:
            for name, value in fields.items():
                if not hasattr(record, name):
                    setattr(record, name, value)
        return True
