"""The group-commit queue both stores use (bot/store/group_commit.py), on its own."""

from __future__ import annotations

import asyncio
from typing import Any

from bot.store.group_commit import WAKE_SLICE, GroupCommit, Op


def _op(n: int) -> Op:
    return Op(kind="single", values={"n": n}, statement="x")


async def test_a_big_batch_wakes_its_callers_a_slice_per_turn_of_the_loop() -> None:
    """Between two slices of woken callers the loop runs what waits behind them (here a callback queued
    when the first caller resumed): a batch of 200 does not hold the loop for all of its callers."""
    applied: list[int] = []

    async def apply(batch: list[Op]) -> list[Any]:
        applied.append(len(batch))
        return [op.values["n"] for op in batch]

    group = GroupCommit(apply)
    order: list[str] = []
    loop = asyncio.get_running_loop()

    async def caller(n: int) -> int:
        result: int = await group.submit(_op(n))
        if n == 0:
            loop.call_soon(order.append, "loop ran")
        order.append(f"woken {n}")
        return result

    count = 7 * WAKE_SLICE
    results = await asyncio.gather(*(caller(n) for n in range(count)))
    assert results == list(range(count)) and applied == [count]
    assert order.index("loop ran") < order.index(f"woken {count - 1}")
    assert order.index("loop ran") > order.index(f"woken {WAKE_SLICE - 1}")  # a whole slice first


async def test_a_flusher_cancelled_between_slices_still_answers_every_caller() -> None:
    async def apply(batch: list[Op]) -> list[Any]:
        return [op.values["n"] for op in batch]

    group = GroupCommit(apply)
    count = 3 * WAKE_SLICE
    callers = [asyncio.ensure_future(group.submit(_op(n))) for n in range(count)]
    await callers[0]  # the first slice is out; the flusher waits for the next turn
    for flusher in list(group._flushers):
        flusher.cancel()
    results = await asyncio.wait_for(asyncio.gather(*callers), timeout=5)
    assert results == list(range(count))


async def test_an_operation_whose_caller_was_cancelled_is_still_applied() -> None:
    release = asyncio.Event()
    applied: list[int] = []

    async def apply(batch: list[Op]) -> list[Any]:
        await release.wait()
        applied.extend(op.values["n"] for op in batch)
        return [None] * len(batch)

    group = GroupCommit(apply)
    waiting = asyncio.ensure_future(group.submit(_op(1)))
    await asyncio.sleep(0)
    waiting.cancel()
    release.set()
    await asyncio.wait_for(group.drain(), timeout=5)
    assert applied == [1] and waiting.cancelled()
