"""What the job code tells the operator's side, and asks it: a small interface with no-op defaults.

`bot.jobs.service` calls these at a job's steps; `bot.ops.seat.OpsHooks` feeds metrics and alerts from them. A
hook never raises into the job (failures are logged) and never blocks it for long.
"""

from __future__ import annotations

from bot.errors import BotError, RequestError
from bot.store.records import JobRecord, NewJob


class JobHooks:
    """No-op hooks; the default when nothing listens."""

    async def paused(self) -> bool:
        """True while the operator's kill switch is on: no job is taken or started."""
        return False

    async def refused(self, job: NewJob, error: RequestError) -> None:
        """A hold was refused (credits, budget, a cap): nothing was written."""

    def held(self, job: JobRecord) -> None:
        """Credits were held for a new job."""

    async def finished(
        self, job: JobRecord, error: BotError | None, *, polls: int = 0, detection_lag: float | None = None
    ) -> None:
        """A job was settled (delivered when `error` is None)."""
