"""Work done once for the whole bot: `claim_once` over the store's atomic first-claim insert."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.fleet.once import claim_once
from bot.store import open_store
from bot.store.base import Store

WINDOW = 300.0


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[list[Store]]:
    """Two stores on one database file: two processes' connections."""
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    opened = [open_store(url), open_store(url)]
    for store in opened:
        await store.open()
    yield opened
    for store in opened:
        await store.close()


async def test_of_many_concurrent_claimants_on_two_connections_exactly_one_wins(stores: list[Store]) -> None:
    now = 10 * WINDOW + 12.0
    results = await asyncio.gather(
        *(claim_once(stores[i % 2], "sync:abc", now=now, window=WINDOW) for i in range(20))
    )
    assert results.count(True) == 1


async def test_claimants_straddling_a_window_boundary_do_not_both_win(stores: list[Store]) -> None:
    late_in_a_window, early_in_the_next = 11 * WINDOW - 0.1, 11 * WINDOW + 0.1
    first = await claim_once(stores[0], "sync:abc", now=late_in_a_window, window=WINDOW)
    second = await claim_once(stores[1], "sync:abc", now=early_in_the_next, window=WINDOW)
    assert (first, second) == (True, False)


async def test_the_later_claimant_wins_when_it_claims_between_the_earlier_ones_two_claims(
    stores: list[Store],
) -> None:
    early, late = 11 * WINDOW - 0.1, 11 * WINDOW + 0.1  # windows 10 and 11
    assert await stores[0].claim_alert("once:sync:abc:10", now=early)  # the earlier one's first claim...
    assert await claim_once(stores[1], "sync:abc", now=late, window=WINDOW)  # ...then the later one wins 11 and 12
    assert not await stores[0].claim_alert("once:sync:abc:11", now=early)  # so the earlier one's second fails


async def test_a_dead_claimants_claim_stops_counting_after_two_windows(stores: list[Store]) -> None:
    start = 20 * WINDOW + 5.0
    assert await claim_once(stores[0], "sync:abc", now=start, window=WINDOW)  # then "dies" without syncing
    assert not await claim_once(stores[1], "sync:abc", now=start + WINDOW, window=WINDOW)
    assert await claim_once(stores[1], "sync:abc", now=start + 2 * WINDOW, window=WINDOW)


async def test_other_work_and_other_definitions_are_claimed_separately(stores: list[Store]) -> None:
    now = 30 * WINDOW
    assert await claim_once(stores[0], "sync:abc", now=now, window=WINDOW)
    assert await claim_once(stores[1], "sync:def", now=now, window=WINDOW)


async def test_a_window_must_be_positive(stores: list[Store]) -> None:
    with pytest.raises(ValueError, match="positive"):
        await claim_once(stores[0], "sync:abc", now=0, window=0)
