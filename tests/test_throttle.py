"""The gateway request-rate cap: a token bucket that serves the most useful waiter first.

Time is a fake clock advanced by the limiter's own (injected) sleep: nothing here waits on the wall clock.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import aiohttp
import pytest
from pydantic import SecretStr

from bot.config import Settings
from bot.generation.gateway import GatewayClient
from bot.throttle import ImageMemoryBudget, RequestRateLimiter
from bot.throttle.memory import STREAM_BYTES, STREAM_SHARE
from tests.fakes import FakeGateway

ASYNC = "stability-ai/sdxl"


class FakeTime:
    """A clock that moves only when the limiter sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)  # let the waiters granted so far run at the current time
        self.now += max(0.0, seconds)


def limiter(rate: float, time: FakeTime, burst: float | None = None) -> RequestRateLimiter:
    return RequestRateLimiter(rate, burst=burst, clock=time.clock, sleep=time.sleep)


async def test_never_more_than_the_rate_after_the_burst() -> None:
    time = FakeTime()
    cap = limiter(4.0, time)
    granted: list[float] = []

    async def request() -> None:
        await cap.acquire()
        granted.append(time.now)

    await asyncio.wait_for(asyncio.gather(*(request() for _ in range(40))), 5)
    assert len(granted) == 40
    assert granted[:4] == [0.0] * 4  # the initial burst
    # Any window of one second (after the burst) holds at most `rate` grants, and the run takes 36/4 s.
    for i in range(4, len(granted) - 4):
        assert granted[i + 4] - granted[i] >= 1.0 - 1e-9
    assert granted[-1] == pytest.approx(9.0)


async def test_waiters_are_served_by_priority_then_arrival() -> None:
    time = FakeTime()
    cap = limiter(1.0, time, burst=1)
    await cap.acquire()  # the bucket is now empty: everyone below waits
    order: list[str] = []

    async def request(name: str, priority: float) -> None:
        await cap.acquire(priority)
        order.append(name)

    tasks = [
        asyncio.create_task(request(name, priority))
        for name, priority in [("low", 0.1), ("high", 0.9), ("mid-a", 0.5), ("mid-b", 0.5), ("submit", float("inf"))]
    ]
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == ["submit", "high", "mid-a", "mid-b", "low"]
    assert time.now == pytest.approx(5.0)


async def test_a_cancelled_waiter_does_not_use_a_token() -> None:
    time = FakeTime()
    cap = limiter(1.0, time, burst=1)
    await cap.acquire()
    doomed = asyncio.create_task(cap.acquire(1.0))
    await asyncio.sleep(0)
    assert cap.waiting == 1
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await asyncio.wait_for(cap.acquire(), 5)
    assert time.now == pytest.approx(1.0)  # the next token went to the next waiter, not to the cancelled one


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RequestRateLimiter(0)


def test_setting_builds_the_limiter() -> None:
    base = {"_env_file": None, "discord_token": "t" * 10, "gateway_api_key": "k" * 10}
    assert Settings(**base).gateway_max_requests_per_second is None  # type: ignore[arg-type]
    settings = Settings(**base, gateway_max_requests_per_second=3)  # type: ignore[arg-type]
    client = GatewayClient.from_settings(None, settings)  # type: ignore[arg-type]
    assert client._limiter is not None and client._limiter.rate == 3
    assert GatewayClient.from_settings(None, Settings(**base))._limiter is None  # type: ignore[arg-type]


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    async with FakeGateway() as fake:
        fake.configure_all(completion_delay=0.0)
        yield fake


async def test_gateway_requests_wait_for_the_cap_best_poll_first(gw: FakeGateway) -> None:
    """Over the wire: with the bucket empty, queued polls reach the gateway likeliest-first, POSTs before."""
    time = FakeTime()
    cap = limiter(2.0, time, burst=1)
    async with aiohttp.ClientSession() as session:
        client = GatewayClient(
            session, gw.base_url, SecretStr(gw.api_key), allow_loopback_http=True, rng=random.Random(0), limiter=cap
        )
        ops = [(await client.submit(ASYNC, f"p{i}", {})).operation_id for i in range(3)]
        assert all(ops)
        assert time.now == pytest.approx(1.0)  # three POSTs at 2 per second after a burst of one
        before = len(gw.requests)
        polls = [
            asyncio.create_task(client.poll(op, ASYNC, priority=p))  # type: ignore[arg-type]
            for op, p in zip(ops, [0.2, 0.7, 0.4], strict=True)
        ]
        late_submit = asyncio.create_task(client.submit(ASYNC, "late", {}))
        results = await asyncio.wait_for(asyncio.gather(*polls, late_submit), 10)
    assert [r.state for r in results[:3]] == ["done"] * 3
    arrived = gw.requests[before:]
    assert [r.kind for r in arrived] == ["POST", "POLL", "POLL", "POLL"]
    assert [r.path.rstrip("/").rsplit("/", 1)[1] for r in arrived[1:]] == [ops[1], ops[2], ops[0]]
    assert time.now == pytest.approx(3.0)  # four more requests, one every half second


# --- the image memory budget's stream slots ---------------------------------------------------------------


async def test_stream_slots_bound_streams_and_serve_uploads_first() -> None:
    budget = ImageMemoryBudget(2 * STREAM_SHARE * STREAM_BYTES)
    assert budget.stream_slots == 2 and budget.image_limit == budget.limit_bytes - 2 * STREAM_BYTES  # type: ignore[operator]
    release = asyncio.Event()
    order: list[str] = []
    inside = 0
    most = 0

    async def stream(name: str, *, upload: bool) -> None:
        nonlocal inside, most
        async with budget.stream(upload=upload):
            inside += 1
            most = max(most, inside)
            order.append(name)
            await release.wait()
            inside -= 1

    first = [asyncio.create_task(stream(f"d{i}", upload=False)) for i in range(2)]
    await asyncio.sleep(0)
    later = [asyncio.create_task(stream(f"d{i}", upload=False)) for i in range(2, 4)]
    later += [asyncio.create_task(stream("u0", upload=True))]
    async with asyncio.timeout(5):
        while budget.streams_waiting < 3:  # noqa: ASYNC110 - polling the budget's own counter
            await asyncio.sleep(0)
    assert order == ["d0", "d1"] and budget.streams == 2
    release.set()
    await asyncio.wait_for(asyncio.gather(*first, *later), 5)
    assert most == 2
    assert order[2] == "u0"  # the upload, though it came last, before the downloads that waited
    assert budget.streams == 0 and budget.peak_total == 2 * STREAM_BYTES


async def test_a_slot_granted_to_a_cancelled_waiter_goes_to_the_next() -> None:
    budget = ImageMemoryBudget(0)  # below one slot: still one stream at a time
    assert budget.stream_slots == 1 and budget.image_limit == 0
    holder_done = asyncio.Event()

    async def hold() -> None:
        async with budget.stream():
            await holder_done.wait()

    async def take() -> str:
        async with budget.stream():
            return "got it"

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(take())
    waiting = asyncio.create_task(take())
    async with asyncio.timeout(5):
        while budget.streams_waiting < 2:  # noqa: ASYNC110 - polling the budget's own counter
            await asyncio.sleep(0)
    holder_done.set()
    await asyncio.sleep(0)  # the holder leaves and grants its slot to the first waiter...
    cancelled.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(waiting, 5) == "got it"
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await holder
    assert budget.streams == 0 and budget.streams_waiting == 0
