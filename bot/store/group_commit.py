"""Group commit: writes that arrive while a transaction is running go together in the next one.

Both stores use it for holds and settlements (SQLite for its single-statement writes too). On either
database the limit of many small writes is the round trips and commits, not the SQL: one transaction
for a whole queue of them replaces one each. A dialect gives `apply(batch)`, which runs a batch in one
transaction and returns each operation's outcome in order (a value, or an exception for that operation
alone), or raises when the transaction failed as a whole.

The promises, whatever the dialect:
- An operation, once submitted, is applied even if its caller is cancelled: cancelling the caller
  cancels only its wait.
- A failed batch is rolled back and each of its operations is applied alone, so one bad operation (say a
  duplicate job id) fails only its own caller. `NotStarted` says the transaction never began (nothing was
  tried): then every operation of the batch gets that error without a retry.
- Batches are taken in arrival order. With `max_in_flight=1` (SQLite: one writer) they run one at a
  time; more (PostgreSQL) lets that many transactions run at once on separate connections, where the
  database's own locks order what must be ordered. The operations of one batch were all in flight
  together, so any order among them is one their callers could have seen.
- `drain()` waits until every submitted operation has been applied; on a cancelled flush (shutdown),
  every waiting caller gets an error instead of waiting forever.
- Callers are woken a slice at a time (`WAKE_SLICE` per turn of the event loop), not a whole batch in
  one turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

MAX_BATCH = 500
# Callers woken per turn of the event loop. Each resumes into its own next step (often an HTTP request to
# build); a whole batch of 500 in one turn stalled the loop (timers, I/O) for a quarter of a second.
WAKE_SLICE = 32


class NotStarted(Exception):
    """The batch's transaction could not begin (say, a file locked past the busy timeout): nothing ran."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(eq=False)
class Op:
    """A hold, a settlement or a single-statement write waiting for the next group commit."""

    kind: Literal["hold", "finish", "single"]
    values: dict[str, Any]
    request: Any = None  # kind "hold": the store's HoldRequest
    statement: str = ""  # kind "single": the statement, run with `values`
    future: asyncio.Future[Any] = field(init=False)


Apply = Callable[[list[Op]], Awaitable[list[Any]]]
AloneError = Callable[[Op, Exception], Exception]


class GroupCommit:
    """The queue of operations waiting for a transaction, and the task that applies them."""

    def __init__(
        self,
        apply: Apply,
        *,
        alone_error: AloneError | None = None,
        gate: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = 1,
    ) -> None:
        """`gate`: entered around each batch, before it is taken from the queue (SQLite's write lock), so
        that what arrives while the flusher waits for it joins the batch. `alone_error`: the error an
        operation applied alone gets for its failure (a dialect's translation, say, of a duplicate key)."""
        self._apply = apply
        self._gate = gate or contextlib.nullcontext
        self._alone_error = alone_error or (lambda op, exc: exc)
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: list[Op] = []
        self._flushers: set[asyncio.Task[None]] = set()

    async def submit(self, op: Op) -> Any:
        """Queue `op` for the next transaction and wait for its outcome (raised when it is an error)."""
        op.future = asyncio.get_running_loop().create_future()
        self._queue.append(op)
        # A flusher that found the queue empty is done at once (no await between its check and its end),
        # though its done-callback has not yet removed it: count the running ones only.
        if sum(not flusher.done() for flusher in self._flushers) < self._max_in_flight:
            flusher = asyncio.ensure_future(self._flush())
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        return await op.future

    async def drain(self) -> None:
        """Wait until every operation submitted so far has been applied."""
        while running := [flusher for flusher in self._flushers if not flusher.done()]:
            await asyncio.shield(running[0])

    async def _flush(self) -> None:
        while self._queue:
            batch: list[Op] = []
            try:
                async with self._gate():
                    batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                    outcomes = await self._apply_or_split(batch)
            except BaseException as exc:  # cancelled (shutdown): nobody may wait forever
                failed, self._queue = batch + self._queue, []
                for op in failed:
                    if not op.future.done():
                        op.future.set_exception(
                            RuntimeError(
                                f"the store was stopped while applying this ({exc!r}); see active_jobs after restart"
                            )
                        )
                raise
            await _deliver(list(zip(batch, outcomes, strict=True)))

    async def _apply_or_split(self, batch: list[Op]) -> list[Any]:
        try:
            return await self._apply(batch)
        except NotStarted as exc:
            return [exc.error] * len(batch)
        except Exception as exc:  # every failure goes back to its callers
            if len(batch) == 1:
                return [self._alone_error(batch[0], exc)]
            log.warning("a batch of %d writes failed (%r); applying them one by one", len(batch), exc)
            outcomes: list[Any] = []
            for op in batch:
                outcomes.extend(await self._apply_or_split([op]))
            return outcomes


def _resolve(op: Op, outcome: Any) -> None:
    if op.future.done():
        return
    if isinstance(outcome, BaseException):
        op.future.set_exception(outcome)
    else:
        op.future.set_result(outcome)


async def _deliver(outcomes: list[tuple[Op, Any]]) -> None:
    """Hand each operation its outcome, `WAKE_SLICE` callers per turn of the loop, so that the timers and
    I/O waiting behind a big batch run between the slices. Cancelled between slices, the rest are
    handed theirs at once: nobody is left waiting."""
    try:
        for start in range(0, len(outcomes), WAKE_SLICE):
            if start:
                await asyncio.sleep(0)
            for op, outcome in outcomes[start : start + WAKE_SLICE]:
                _resolve(op, outcome)
    finally:
        for op, outcome in outcomes:
            _resolve(op, outcome)
