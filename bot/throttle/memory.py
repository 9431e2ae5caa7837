"""A budget for the image bytes the process holds in memory at once.

Finished images wait in memory from download (or decoding) to upload. With hundreds of jobs finishing
together that is hundreds of megabytes, so each image is charged to this budget while it lives; an image
that does not fit is kept in a temporary file instead and uploaded from there. An image gives its bytes
back when it is garbage-collected (CPython frees it as soon as the job drops it), so no caller has to
remember to release anything.
"""

from __future__ import annotations

import threading


class ImageMemoryBudget:
    """At most `limit_bytes` of image data in memory (None: no limit). Thread-safe: images are checked
    and spooled in worker threads."""

    def __init__(self, limit_bytes: int | None) -> None:
        self.limit_bytes = limit_bytes
        self.held = 0
        self.peak = 0
        self._lock = threading.Lock()

    def try_reserve(self, size: int) -> bool:
        """Charge `size` bytes if they fit; False (nothing charged) when they do not."""
        with self._lock:
            if self.limit_bytes is not None and self.held + size > self.limit_bytes:
                return False
            self.held += size
            self.peak = max(self.peak, self.held)
            return True

    def release(self, size: int) -> None:
        """Give back bytes charged by `try_reserve`."""
        with self._lock:
            self.held = max(0, self.held - size)
