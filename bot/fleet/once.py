"""Work that must happen once for the whole bot, however many processes start at the same time.

Built on the store's atomic first-claim insert (`Store.claim_alert`), which has no expiry: a claim is
made for a time window instead, so a process that claimed and died blocks the work only for a while.
A process does the work when it is first to claim its own window *and* the next one; then two processes
whose clocks or start-ups straddle a window boundary cannot both win (the earlier one's second claim is
the later one's first), and a chain of losers always ends with one winner.
"""

from __future__ import annotations

import math

from bot.store.base import Store

ONCE_PREFIX = "once:"


async def claim_once(store: Store, name: str, *, now: float, window: float) -> bool:
    """Whether this process is the one to do `name` now (True at most once per fleet while another
    claimant could still be at work; a dead claimant's claim stops counting after one to two `window`s).

    Mark the work done elsewhere (e.g. in the store's meta) only after it succeeded, and check that mark
    before claiming: the claim says who tries, not that it was done.
    """
    if window <= 0:
        raise ValueError("window must be positive")
    slot = math.floor(now / window)
    if not await store.claim_alert(f"{ONCE_PREFIX}{name}:{slot}", now=now):
        return False
    return await store.claim_alert(f"{ONCE_PREFIX}{name}:{slot + 1}", now=now)
