"""A budget for the image bytes the process holds in memory at once.

Finished images wait in memory from download (or decoding) to upload. With hundreds of jobs finishing
together that is hundreds of megabytes, so each image is charged to this budget while it lives; an image
that does not fit is kept in a temporary file instead and uploaded from there. An image gives its bytes
back when it is garbage-collected (CPython frees it as soon as the job drops it), so no caller has to
remember to release anything.

Images are not all that a delivery holds: every download and every upload in flight has its own buffers
(aiohttp's read buffer, the chunk in hand, the spool writer's batch, the transport's write buffer), about
a megabyte each whatever the image, and hundreds in flight at once made more than the images themselves.
So a share of the budget is kept for streams: each download or upload holds one stream slot of
`STREAM_BYTES` while it runs, and waits for one when all are taken (uploads first: they free memory).
Images get what is left. Images plus streams never exceed the limit, whatever the number of jobs (except
with a limit below one slot: one stream always runs, else nothing could be delivered).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import AsyncIterator

# What one download or upload in flight can hold outside the images it moves: aiohttp's read buffer (its
# high-water mark, 128 KiB, plus one socket read of up to 256 KiB), the chunk in hand (256 KiB) and the
# spool writer's batch (up to 256 KiB more); for an upload, one 256 KiB chunk read from the image and the
# transport's write buffer.
STREAM_BYTES = 1024 * 1024
# The share of the budget kept for streams (1 / STREAM_SHARE of it): 16 at once with the default 64 MiB.
STREAM_SHARE = 4


class ImageMemoryBudget:
    """At most `limit_bytes` of image data and stream buffers in memory (None: no limit). `try_reserve` and
    `release` are thread-safe (images are checked and spooled in worker threads); `stream()` is for the
    event loop."""

    def __init__(self, limit_bytes: int | None) -> None:
        self.limit_bytes = limit_bytes
        self.held = 0  # image bytes
        self.peak = 0  # the most image bytes held at once
        self.streams = 0  # downloads and uploads in flight
        self.peak_total = 0  # the most image bytes + stream slots (STREAM_BYTES each) at once
        if limit_bytes is None:
            self.stream_slots: int | None = None
            self._image_limit: int | None = None
        else:
            self.stream_slots = max(1, limit_bytes // STREAM_SHARE // STREAM_BYTES)
            self._image_limit = max(0, limit_bytes - self.stream_slots * STREAM_BYTES)
        self._lock = threading.Lock()
        self._uploads: collections.deque[asyncio.Future[None]] = collections.deque()
        self._downloads: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def image_limit(self) -> int | None:
        """The bytes images may take (the limit less the streams' share)."""
        return self._image_limit

    def _note_peak(self) -> None:
        self.peak = max(self.peak, self.held)
        self.peak_total = max(self.peak_total, self.held + self.streams * STREAM_BYTES)

    def try_reserve(self, size: int) -> bool:
        """Charge `size` bytes of image if they fit; False (nothing charged) when they do not."""
        with self._lock:
            if self._image_limit is not None and self.held + size > self._image_limit:
                return False
            self.held += size
            self._note_peak()
            return True

    def release(self, size: int) -> None:
        """Give back bytes charged by `try_reserve`."""
        with self._lock:
            self.held = max(0, self.held - size)

    @property
    def streams_waiting(self) -> int:
        """Downloads and uploads waiting for a stream slot."""
        return sum(1 for f in (*self._uploads, *self._downloads) if not f.done())

    @contextlib.asynccontextmanager
    async def stream(self, *, upload: bool = False) -> AsyncIterator[None]:
        """Hold one stream slot for a download or an upload (waiting for one if all are taken; an upload is
        served before any download). Cancel-safe: a slot granted to a cancelled waiter goes to the next."""
        await self._acquire_stream(upload)
        try:
            yield
        finally:
            self._release_stream()

    async def _acquire_stream(self, upload: bool) -> None:
        with self._lock:
            if self.stream_slots is None or (
                self.streams < self.stream_slots and not self._uploads and not self._downloads
            ):
                self.streams += 1
                self._note_peak()
                return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._uploads if upload else self._downloads).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release_stream()  # granted just as we were cancelled: pass the slot on
            else:
                with contextlib.suppress(ValueError):
                    (self._uploads if upload else self._downloads).remove(waiter)
            raise

    def _release_stream(self) -> None:
        with self._lock:
            # A released slot goes straight to the next waiter (`streams` stays counted for it).
            for queue in (self._uploads, self._downloads):
                while queue:
                    waiter = queue.popleft()
                    if not waiter.done():
                        waiter.set_result(None)
                        return
            self.streams -= 1
