"""A download's body, chunk by chunk, in memory while the image budget has room and in a file beyond it.

A downloaded image used to be read whole (a list of chunks, then their join) and only then charged to the
memory budget or spooled, so every download in flight sat in memory, uncounted. Here each chunk is charged
as it arrives; the first chunk the budget refuses moves what came so far to a temporary file, and the rest
is written there, so beyond the budget a download holds one chunk at a time. An in-memory body becomes one
`bytes` at the end (a copy of one image for a moment; kept as a bytearray it would be copied by the
upload's BytesIO for the whole upload, where `bytes` are shared). File writes run in one worker thread of
their own, so the event loop never touches the disk and image decoding never waits behind a write.
"""

from __future__ import annotations

import asyncio
import functools
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from bot.throttle.memory import ImageMemoryBudget

HEAD_BYTES = 16  # enough for every magic number `bot.generation.images.sniff_format` knows
_WRITE_BATCH = 256 * 1024  # bytes gathered before one write in the worker: little held outside the budget


@functools.cache
def _spool_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-spool")


T = TypeVar("T")


async def _in_worker(fn: Callable[..., T], *args: object) -> T:
    """Run `fn` in the spool worker. Cancelling the caller never cancels the call: one worker running
    calls in order means a close or a removal queued after a write always runs after it."""
    return await asyncio.shield(asyncio.wrap_future(_spool_executor().submit(fn, *args)))


def _close_and_remove(fd: int | None, path: str | None) -> None:
    if fd is not None:
        os.close(fd)
    if path is not None:
        _remove(path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _create(suffix: str) -> tuple[int, str]:
    return tempfile.mkstemp(prefix="imagine-", suffix=suffix)


def _write_all(fd: int, parts: list[bytes | bytearray]) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


@dataclass(frozen=True)
class SpooledBody:
    """A finished body: in `data` (charged `reserved` bytes of the budget) or in the file `path`."""

    data: bytes | None
    path: str | None
    size: int
    head: bytes
    reserved: int


class SpoolingBuffer:
    """Collects a body within `budget`; `finish()` gives it, `discard()` gives everything back."""

    def __init__(self, budget: ImageMemoryBudget, *, suffix: str = ".img") -> None:
        self._budget = budget
        self._suffix = suffix
        self._memory = bytearray()
        self._reserved = 0
        self._fd: int | None = None
        self._path: str | None = None
        self._creating: Future[tuple[int, str]] | None = None
        self._pending: list[bytes | bytearray] = []
        self._pending_size = 0
        self.size = 0
        self.head = b""

    @property
    def spooled(self) -> bool:
        """Whether the body is going to a file."""
        return self._path is not None

    async def write(self, chunk: bytes) -> None:
        """Add one chunk of the body."""
        self.size += len(chunk)
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
        if self._path is None:
            if self._budget.try_reserve(len(chunk)):
                self._reserved += len(chunk)
                self._memory += chunk
                return
            await self._spill()
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= _WRITE_BATCH:
            await self._flush()

    async def _spill(self) -> None:
        """The budget is full: from now on the body goes to a file, starting with what came so far."""
        creating = self._creating = _spool_executor().submit(_create, self._suffix)
        fd, path = await asyncio.shield(asyncio.wrap_future(creating))
        self._fd, self._path, self._creating = fd, path, None
        if self._memory:
            self._pending.append(self._memory)
            self._pending_size += len(self._memory)
        self._memory = bytearray()
        await self._flush()  # before the bytes are given back to the budget: never over it
        self._budget.release(self._reserved)
        self._reserved = 0

    async def _flush(self) -> None:
        if not self._pending or self._fd is None:
            return
        parts, self._pending, self._pending_size = self._pending, [], 0
        await _in_worker(_write_all, self._fd, parts)

    async def finish(self) -> SpooledBody:
        """The whole body. From here the caller owns it (its reservation, or its file)."""
        await self._flush()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            await _in_worker(os.close, fd)
        # In memory: one `bytes` of the body. Its copy from the bytearray lasts a moment for one image; an
        # image kept as a bytearray would be copied by every BytesIO of its upload (bytes are shared).
        data = None if self._path is not None else bytes(self._memory)
        self._memory = bytearray()
        body = SpooledBody(
            data=data,
            path=self._path,
            size=self.size,
            head=self.head,
            reserved=self._reserved,
        )
        self._memory, self._reserved, self._path = bytearray(), 0, None
        return body

    def discard(self) -> None:
        """Give the reservation back and delete the file, if any (a failed or cancelled download).

        The file is closed and removed in the spool worker, after any write still running there."""
        self._budget.release(self._reserved)
        self._reserved = 0
        self._memory = bytearray()
        self._pending = []
        creating, self._creating = self._creating, None
        if creating is not None:  # cancelled while the file was being created: remove it once it is
            _spool_executor().submit(lambda: _close_and_remove(*creating.result()))
        elif self._fd is not None or self._path is not None:
            _spool_executor().submit(_close_and_remove, self._fd, self._path)
        self._fd, self._path = None, None


def discard_body(body: SpooledBody, budget: ImageMemoryBudget) -> None:
    """Give back what a finished body holds (it was refused after download)."""
    budget.release(body.reserved)
    if body.path is not None:
        _remove(body.path)
