"""MemberRoles: submit-time roles for a job's life; a TTL cache, shared by concurrent misses, otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bot.members import MemberRoles


class Lookups:
    """A stand-in for Discord's member route that counts calls and answers when released."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.release = asyncio.Event()
        self.called = asyncio.Event()
        self.roles: tuple[int, ...] = (7,)

    async def __call__(self, guild_id: int, user_id: int) -> Sequence[int]:
        self.calls.append((guild_id, user_id))
        self.called.set()
        await self.release.wait()
        return self.roles


async def test_known_jobs_never_look_up_and_forgotten_ones_do() -> None:
    roles, lookup = MemberRoles(ttl=60), Lookups()
    lookup.release.set()
    roles.remember("job1", [1, 2])
    assert await roles.roles_for("job1", 10, 20, lookup) == (1, 2)
    assert lookup.calls == []
    roles.forget("job1")
    assert await roles.roles_for("job1", 10, 20, lookup) == (7,)
    assert lookup.calls == [(10, 20)]


async def test_concurrent_misses_share_one_lookup_even_when_one_waiter_is_cancelled() -> None:
    roles, lookup = MemberRoles(ttl=60), Lookups()
    waiters = [asyncio.create_task(roles.roles_for(f"job{i}", 10, 20, lookup)) for i in range(5)]
    await asyncio.wait_for(lookup.called.wait(), 5)
    waiters[0].cancel()
    lookup.release.set()
    results = await asyncio.gather(*waiters[1:])
    assert results == [(7,)] * 4
    assert lookup.calls == [(10, 20)]
    assert await roles.roles_for("job9", 10, 20, lookup) == (7,), "cached"
    assert lookup.calls == [(10, 20)]


async def test_the_cache_expires_after_its_ttl() -> None:
    now = [0.0]
    roles, lookup = MemberRoles(ttl=60, clock=lambda: now[0]), Lookups()
    lookup.release.set()
    await roles.roles_for("a", 10, 20, lookup)
    now[0] = 59.0
    await roles.roles_for("b", 10, 20, lookup)
    assert len(lookup.calls) == 1
    lookup.roles = (8,)
    now[0] = 61.0
    assert await roles.roles_for("c", 10, 20, lookup) == (8,)
    assert len(lookup.calls) == 2
