"""A member's role ids at delivery, without asking Discord for every job.

The roles an interaction carried when the job was submitted are kept for the job's life, in memory: a
delivery reads them instead of `GET /guilds/{id}/members/{id}` (a bot-token route: at a thousand
deliveries that alone would run past Discord's global 50 requests per second). Only a job this process did
not see submitted (resumed after a restart) asks, through `lookup`; those answers are cached per
(guild, member) for `ttl` seconds, and concurrent misses for one member share one request, so a burst of
recovered jobs costs one look-up per member.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

Lookup = Callable[[int, int], Awaitable[Sequence[int]]]

DEFAULT_TTL = 60.0


class MemberRoles:
    """Role ids per job (as submitted) and, for jobs without them, a TTL cache of Discord's answers."""

    def __init__(self, *, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._by_job: dict[str, tuple[int, ...]] = {}
        self._cached: dict[tuple[int, int], tuple[float, tuple[int, ...]]] = {}  # -> (expires at, roles)
        self._pending: dict[tuple[int, int], asyncio.Future[tuple[int, ...]]] = {}
        self._prune_at = 1024

    def remember(self, job_id: str, role_ids: Sequence[int]) -> None:
        """Keep the roles a job was submitted with until `forget(job_id)`."""
        self._by_job[job_id] = tuple(role_ids)

    def forget(self, job_id: str) -> None:
        """The job is over (or no longer this process's): drop its roles."""
        self._by_job.pop(job_id, None)

    def known(self, job_id: str) -> bool:
        """Whether the job's submit-time roles are held here."""
        return job_id in self._by_job

    async def roles_for(self, job_id: str, guild_id: int, user_id: int, lookup: Lookup) -> tuple[int, ...]:
        """The job's roles: as submitted when known, else `lookup(guild_id, user_id)` (cached, shared)."""
        kept = self._by_job.get(job_id)
        if kept is not None:
            return kept
        key = (guild_id, user_id)
        now = self._clock()
        cached = self._cached.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(key, lookup))
            self._pending[key] = pending
        # shield: one waiter cancelled (its job's shutdown) must not cancel the look-up the others share.
        return await asyncio.shield(pending)

    async def _fetch(self, key: tuple[int, int], lookup: Lookup) -> tuple[int, ...]:
        try:
            roles = tuple(await lookup(*key))
        finally:
            self._pending.pop(key, None)
        self._prune()
        self._cached[key] = (self._clock() + self.ttl, roles)
        return roles

    def _prune(self) -> None:
        """Drop expired entries when the cache has doubled since the last sweep (amortised O(1) per
        look-up), so it never outgrows the members seen within `ttl` by more than twice."""
        if len(self._cached) < self._prune_at:
            return
        now = self._clock()
        for key in [k for k, (expires, _) in self._cached.items() if expires <= now]:
            del self._cached[key]
        self._prune_at = max(1024, 2 * len(self._cached))
