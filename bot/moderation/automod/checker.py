"""Checks prompts against a server's AutoMod keyword rules, read from Discord and cached briefly.

The rules come through a fetcher the Discord adapter supplies (the core never talks to Discord). The
fetcher returns None when the bot may not read the rules (no Manage Server): then the check is skipped,
and `status` says so for /server show.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from bot.errors import AutoModBlockedError
from bot.moderation.automod.rules import KeywordRule, parse_rules

RuleFetcher = Callable[[], Awaitable[list[dict[str, Any]] | None]]
CACHE_SECONDS = 60.0  # an admin's new rule applies within a minute


class RulesUnavailableError(Exception):
    """Raised by a fetcher when Discord could not answer in time: this check is skipped, nothing cached."""


Status = Literal["active", "no_permission", "unknown"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Cached:
    fetched_at: float
    rules: list[KeywordRule] | None  # None: the bot may not read them


class AutoModChecker:
    """Per-server cache of keyword rules and the prompt check."""

    def __init__(self, *, ttl: float = CACHE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[int, _Cached] = {}
        self._fetching: dict[int, asyncio.Task[list[KeywordRule] | None]] = {}
        self._generation: dict[int, int] = {}  # bumped by `forget`: a read begun before it is not cached

    async def rules(self, guild_id: int, fetch: RuleFetcher) -> list[KeywordRule] | None:
        """The server's keyword rules (cached for `ttl` seconds); None when the bot may not read them.

        One read at a time per server: the checks that find the cache empty or stale while a read is in
        flight wait for that read instead of each asking Discord (a burst of /imagine would otherwise send
        one request per command, past Discord's 50 a second). Shielded: a cancelled caller does not cut
        the read the others wait for."""
        cached = self._cache.get(guild_id)
        if cached is not None and self._clock() - cached.fetched_at <= self._ttl:
            return cached.rules
        task = self._fetching.get(guild_id)
        if task is None:
            task = asyncio.ensure_future(self._read(guild_id, fetch, cached))
            self._fetching[guild_id] = task
            task.add_done_callback(lambda done: self._done_reading(guild_id, done))
        return await asyncio.shield(task)

    async def _read(self, guild_id: int, fetch: RuleFetcher, stale: _Cached | None) -> list[KeywordRule] | None:
        generation = self._generation.get(guild_id, 0)
        try:
            payload = await fetch()
        except RulesUnavailableError:
            log.warning("AutoMod rules of guild %s unavailable; this prompt is checked without them", guild_id)
            return [] if stale is None else stale.rules
        cached = _Cached(self._clock(), None if payload is None else parse_rules(payload))
        if self._generation.get(guild_id, 0) == generation:
            self._cache[guild_id] = cached
        return cached.rules

    def _done_reading(self, guild_id: int, task: asyncio.Task[list[KeywordRule] | None]) -> None:
        if self._fetching.get(guild_id) is task:
            del self._fetching[guild_id]
        if not task.cancelled():
            task.exception()  # retrieved: a failure reaches the waiting callers, not the loop's log

    async def check(
        self,
        guild_id: int,
        prompt: str,
        fetch: RuleFetcher,
        *,
        role_ids: Iterable[int] = (),
        channel_ids: Iterable[int] = (),
    ) -> None:
        """Raise `AutoModBlockedError` when a rule that applies to this member and channel matches `prompt`."""
        rules = await self.rules(guild_id, fetch)
        roles, channels = list(role_ids), list(channel_ids)
        for rule in rules or []:
            if rule.applies_to(roles, channels) and rule.matches(prompt):
                raise AutoModBlockedError(rule=rule.name)

    def status(self, guild_id: int) -> Status:
        """What the last read of the server's rules found."""
        cached = self._cache.get(guild_id)
        if cached is None:
            return "unknown"
        return "no_permission" if cached.rules is None else "active"

    def forget(self, guild_id: int) -> None:
        """Drop the cached rules, so the next check reads them again (and a read in flight is not kept)."""
        self._cache.pop(guild_id, None)
        self._fetching.pop(guild_id, None)
        self._generation[guild_id] = self._generation.get(guild_id, 0) + 1
