"""A request-rate cap that, when requests wait, grants the most useful one first.

A token bucket: `rate` requests per second on average, at most `burst` at once after a quiet spell. A
request that finds no token waits in a priority queue; when the next token comes, it goes to the waiter
with the highest priority (for polls: the likeliest to find a finished job; submits come first of all, as
a job cannot start without its POST). Waiters of equal priority are served in arrival order.

The clock and the sleep are injectable, so tests drive time by hand instead of waiting on the wall clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable

SUBMIT_PRIORITY = float("inf")  # a POST before any poll


class RequestRateLimiter:
    """At most `rate` requests per second on average (bursts of `burst`), the best waiter first."""

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._stamp = clock()
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []  # (-priority, arrival, future)
        self._order = itertools.count()
        self._granter: asyncio.Task[None] | None = None

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def waiting(self) -> int:
        """Requests waiting for a token."""
        return sum(1 for _, _, future in self._waiters if not future.done())

    async def acquire(self, priority: float = 0.0) -> None:
        """Wait for a token. Higher `priority` is served first among waiters. Cancel-safe."""
        self._refill()
        if not self._waiters and self._tokens >= 1.0:
            self._tokens -= 1.0
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (-priority, next(self._order), future))
        if self._granter is None or self._granter.done():
            self._granter = asyncio.create_task(self._grant(), name="gateway-rate-limiter")
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._tokens += 1.0  # granted just as we were cancelled: give the token back
            raise

    async def _grant(self) -> None:
        """Hand out tokens to waiters, best first, as they accrue; ends when nobody waits."""
        while self._waiters:
            self._refill()
            if self._tokens < 1.0:
                await self._sleep((1.0 - self._tokens) / self.rate)
                continue
            _, _, future = heapq.heappop(self._waiters)
            if future.done():  # its caller was cancelled while waiting
                continue
            self._tokens -= 1.0
            future.set_result(None)
