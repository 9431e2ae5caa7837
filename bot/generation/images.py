"""Image bytes: decoding what the gateway sends, checking it is an image, fitting it under an upload limit.

Everything here is CPU work on untrusted bytes. The sync functions do the work; the `*_async` wrappers run
it in a worker thread so that a 20 MB base64 payload never stalls the event loop. The heavy C routines
(base64, Pillow decoders and encoders) either release the GIL or are fed in chunks that let the loop's
thread back in between.

Checked images count against the process's image memory budget (`set_memory_budget`,
IMAGE_MEMORY_BUDGET_BYTES; a quarter of it is kept for downloads and uploads in flight, see
`bot.throttle.memory`): the `*_async` wrappers keep an image in memory while the budget has room and
otherwise move it to a temporary file, which the upload then streams from. An in-memory image is uploaded
through a `SharedBytesIO`, which neither copies it nor, once closed, keeps it alive.
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import io
import logging
import os
import tempfile
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from bot.errors import DeliveryError, MalformedResponseError
from bot.throttle.memory import ImageMemoryBudget
from bot.throttle.spool import SpooledBody, discard_body

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000

# base64 characters decoded per call. binascii holds the GIL for a whole call (about 45 ms for 20 MB), so a
# big payload is decoded in slices: between two slices the event loop's thread can take the GIL back.
_B64_CHUNK = 256 * 1024  # a multiple of 4
_DATA_URL_HEADER_MAX = 256

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"

# Our format name -> Pillow's, so that Pillow never tries a format we did not sniff.
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_DATA_URL_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/webp"}


class SharedBytesIO(io.BytesIO):
    """A read-only `BytesIO` over `bytes` that never copies them.

    A `BytesIO` made from `bytes` shares them until something asks for its buffer; aiohttp's upload
    payload does (`getbuffer()`, for the size), which makes the `BytesIO` copy the whole image for the
    whole upload: every in-memory image was held twice while it went to Discord, outside the budget."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._shared = data

    def getbuffer(self) -> memoryview:
        return memoryview(self._shared)  # read-only: nothing writes to an upload's stream

    def write(self, data: object) -> int:
        raise io.UnsupportedOperation("read-only stream")

    def close(self) -> None:
        """Let go of the bytes: an upload's request objects may live on in reference cycles until the
        garbage collector runs, and would keep the image alive after its budget was given back."""
        self._shared = b""
        super().close()


@dataclass(frozen=True)
class ImageData:
    """A checked image: its bytes exactly as received, its format and size.

    The bytes are either in `data` or, for an image spooled out of the memory budget, in the temporary
    file `path` (then `data` is empty); `size` counts them either way. Use `open()` or `read_bytes()`.
    """

    data: bytes
    format: str  # "png" | "jpeg" | "webp"
    width: int
    height: int
    path: str | None = None
    spooled_size: int = 0

    @property
    def extension(self) -> str:
        """File extension for an upload, without the dot."""
        return _EXTENSIONS[self.format]

    @property
    def size(self) -> int:
        """Bytes of the image file."""
        return self.spooled_size if self.path is not None else len(self.data)

    def open(self) -> BinaryIO:
        """The image's bytes as a readable binary stream."""
        return open(self.path, "rb") if self.path is not None else SharedBytesIO(self.data)

    def read_bytes(self) -> bytes:
        """The image's bytes (reads the file of a spooled image)."""
        if self.path is None:
            return self.data
        with open(self.path, "rb") as file:
            return file.read()

    def __repr__(self) -> str:
        # Never print the payload (logs, test failures, tracebacks).
        where = ", spooled" if self.path is not None else ""
        return f"ImageData(format={self.format!r}, {self.width}x{self.height}, {self.size} bytes{where})"


# --- the memory budget ----------------------------------------------------------------------------------

_budget = ImageMemoryBudget(None)


def set_memory_budget(limit_bytes: int | None) -> ImageMemoryBudget:
    """Set how many bytes of checked images the process keeps in memory at once (None: no limit)."""
    global _budget
    _budget = ImageMemoryBudget(limit_bytes)
    return _budget


def memory_budget() -> ImageMemoryBudget:
    """The process's image memory budget."""
    return _budget


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def keep_within_budget(image: ImageData, budget: ImageMemoryBudget | None = None) -> ImageData:
    """`image` charged to the memory budget until it is garbage-collected, or, when the budget is full,
    a copy of it in a temporary file (deleted when that copy is garbage-collected). Blocking: call it in a
    worker thread."""
    budget = budget or _budget
    if image.path is not None:
        return image
    size = len(image.data)
    if budget.try_reserve(size):
        weakref.finalize(image, budget.release, size)
        return image
    fd, path = tempfile.mkstemp(prefix="imagine-", suffix="." + image.extension)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(image.data)
    except BaseException:
        _remove(path)
        raise
    spooled = ImageData(b"", image.format, image.width, image.height, path=path, spooled_size=size)
    weakref.finalize(spooled, _remove, path)
    return spooled


def sniff_format(data: bytes) -> str | None:
    """The format the magic bytes announce ("png", "jpeg", "webp"), or None."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def inspect_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageData:
    """Check that `data` is a PNG, JPEG or WebP image Pillow can read, and not a decompression bomb.

    Only the header is parsed before the size check, so a tiny file announcing a huge canvas is refused
    before anything is decoded. Raises `MalformedResponseError` for anything else.
    """
    fmt = sniff_format(data)
    if fmt is None:
        raise MalformedResponseError("not a PNG, JPEG or WebP image", status=None)
    width, height = _check_stream(io.BytesIO(data), fmt, max_pixels)
    return ImageData(data=data, format=fmt, width=width, height=height)


def _check_stream(stream: BinaryIO, fmt: str, max_pixels: int) -> tuple[int, int]:
    """The checks of `inspect_image` on an open stream of a `fmt` image; its width and height."""
    try:
        with warnings.catch_warnings():
            # Pillow warns between MAX_IMAGE_PIXELS and twice that; our own limit below decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream, formats=[_PIL_FORMATS[fmt]]) as img:
                width, height = img.size
                if width <= 0 or height <= 0 or width * height > max_pixels:
                    raise MalformedResponseError(
                        f"image of {width}x{height} pixels exceeds the {max_pixels} pixel limit", status=None
                    )
                img.verify()
    except Image.DecompressionBombError as exc:
        raise MalformedResponseError("image exceeds the pixel limit", status=None) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports broken files with any of these (SyntaxError is its "broken PNG" error).
        raise MalformedResponseError(f"unreadable {fmt} image: {type(exc).__name__}", status=None) from exc
    return width, height


def inspect_body(
    body: SpooledBody, *, max_pixels: int = DEFAULT_MAX_PIXELS, budget: ImageMemoryBudget | None = None
) -> ImageData:
    """Check a downloaded body (`bot.throttle.spool`) as `inspect_image` does and make it an image that
    gives back its budget reservation, or deletes its file, when garbage-collected. A refused body is
    given back at once. Blocking: call it in a worker thread."""
    budget = budget or _budget
    try:
        fmt = sniff_format(body.head)
        if fmt is None:
            raise MalformedResponseError("not a PNG, JPEG or WebP image", status=None)
        if body.path is None:
            assert body.data is not None
            width, height = _check_stream(io.BytesIO(body.data), fmt, max_pixels)
            image = ImageData(data=body.data, format=fmt, width=width, height=height)
            weakref.finalize(image, budget.release, body.reserved)
            return image
        with open(body.path, "rb") as file:
            width, height = _check_stream(file, fmt, max_pixels)
        image = ImageData(b"", fmt, width, height, path=body.path, spooled_size=body.size)
        weakref.finalize(image, _remove, body.path)
        return image
    except BaseException:
        discard_body(body, budget)
        raise


def b64decode_strict(value: str | bytes, start: int = 0) -> bytes:
    """Strict base64 (no whitespace, correct padding) of `value[start:]`, decoded in GIL-friendly slices.

    Slicing here instead of at the caller matters: one `url[22:]` of a 60 MB data URL is a single copy that
    holds the GIL for tens of milliseconds. Raises `MalformedResponseError` on non-canonical base64.
    """
    length = len(value) - start
    if length <= 0 or length % 4:
        raise MalformedResponseError("base64 payload has a bad length", status=None)
    parts: list[bytes] = []
    try:
        for offset in range(start, len(value), _B64_CHUNK):
            parts.append(binascii.a2b_base64(value[offset : offset + _B64_CHUNK], strict_mode=True))
    except ValueError as exc:  # binascii.Error, or a non-ASCII str
        raise MalformedResponseError("invalid base64 payload", status=None) from exc
    return b"".join(parts)


def decode_b64(s: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageData:
    """Decode a bare base64 image (the gateway's `b64_json`) and check it."""
    return inspect_image(b64decode_strict(s), max_pixels=max_pixels)


def decode_data_url(url: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageData:
    """Decode a `data:image/...;base64,...` URL and check the image it holds."""
    if not url.startswith("data:"):
        raise MalformedResponseError("not a data: URL", status=None)
    comma = url.find(",", 0, _DATA_URL_HEADER_MAX)  # never scan (or copy) the payload for the header
    if comma < 0:
        raise MalformedResponseError("data: URL without a payload", status=None)
    fields = [f.strip().lower() for f in url[5:comma].split(";")]
    if "base64" not in fields[1:]:
        raise MalformedResponseError("data: URL is not base64", status=None)
    if fields[0] and fields[0] not in _DATA_URL_TYPES:
        raise MalformedResponseError("data: URL is not an image type", status=None)
    # The declared type is advisory: the magic bytes decide (some providers label JPEGs as PNG).
    return inspect_image(b64decode_strict(url, comma + 1), max_pixels=max_pixels)


def _decode_and_keep(value: str, max_pixels: int) -> ImageData:
    return keep_within_budget(decode_image(value, max_pixels=max_pixels))


def _inspect_and_keep(data: bytes, max_pixels: int) -> ImageData:
    return keep_within_budget(inspect_image(data, max_pixels=max_pixels))


def decode_image(value: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageData:
    """Decode either a data: URL or bare base64."""
    if value.startswith("data:"):
        return decode_data_url(value, max_pixels=max_pixels)
    return decode_b64(value, max_pixels=max_pixels)


# Decoding is mostly GIL-bound (base64), so more threads would not decode faster; they would only make
# the event loop's thread queue behind more GIL holders. One worker keeps the loop's worst wait at about
# one switch interval plus one slice.
# (Measured by bench/bench_polling.py: four 4096x4096 decodes stall the loop ~11 ms with one worker,
# ~17 ms with two, over 100 ms with four.)
_DECODE_WORKERS = 1


@functools.cache
def _decode_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_DECODE_WORKERS, thread_name_prefix="image-decode")


async def decode_image_async(value: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageData:
    """`decode_image` in a worker thread: a data: URL or bare base64 to a checked image, kept within the
    memory budget (`keep_within_budget`)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_decode_executor(), _decode_and_keep, value, max_pixels)


async def inspect_body_async(body: SpooledBody, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageData:
    """`inspect_body` in the decode worker (a streamed download: already within the memory budget)."""
    loop = asyncio.get_running_loop()
    # The image comes back through `box`, not as the call's result: the worker thread keeps its last
    # result alive until its next call, which would hold a spool file (or budget bytes) after the job.
    # Cancelled meanwhile, the worker still finishes; the image nobody holds gives everything back.
    box: list[ImageData] = []
    await loop.run_in_executor(_decode_executor(), lambda: box.append(inspect_body(body, max_pixels=max_pixels)))
    return box.pop()


async def inspect_image_async(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageData:
    """`inspect_image` in a worker thread, the image kept within the memory budget."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_decode_executor(), _inspect_and_keep, data, max_pixels)


# --- fitting under an upload limit --------------------------------------------------------------------------

_WEBP_QUALITIES = (90, 80, 70)
_QUALITY_STEP_GAIN = 0.8  # a step down in quality rarely saves more than 20 %
_WEBP_MAX_SIDE = 16383  # the WebP format's own limit
_MIN_SIDE = 64  # below this the result is useless; give up instead


def _encode_webp(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    # method=4 is libwebp's default speed/size balance; higher methods cost seconds on 16 MP images.
    img.save(out, format="WEBP", quality=quality, method=4)
    return out.getvalue()


def fit_for_upload(image: ImageData, limit_bytes: int) -> tuple[bytes, str]:
    """Bytes and file extension of `image` that fit in `limit_bytes`.

    The original bytes when they fit; otherwise lossy WebP (alpha kept) at decreasing quality, then smaller
    and smaller sizes. Raises `DeliveryError` when even a small thumbnail does not fit.
    """
    if image.size <= limit_bytes:
        return image.read_bytes(), image.extension
    try:
        with image.open() as stream, Image.open(stream) as opened:
            opened.load()
            has_alpha = opened.mode in ("RGBA", "LA", "PA") or (opened.mode == "P" and "transparency" in opened.info)
            img = opened.convert("RGBA" if has_alpha else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DeliveryError(f"cannot re-encode image: {type(exc).__name__}") from exc

    if max(img.size) > _WEBP_MAX_SIDE:
        img.thumbnail((_WEBP_MAX_SIDE, _WEBP_MAX_SIDE), Image.Resampling.LANCZOS)

    # Each encode of a 16 MP image costs seconds, so a lower quality is tried only when it can plausibly
    # fit (one step down saves roughly 15-20 %); otherwise go straight to a smaller size.
    size = 0
    quality = _WEBP_QUALITIES[0]
    for quality in _WEBP_QUALITIES:
        if size and size * _QUALITY_STEP_GAIN > limit_bytes:
            break
        encoded = _encode_webp(img, quality)
        size = len(encoded)
        if size <= limit_bytes:
            return encoded, "webp"

    # Lossy size grows roughly with the pixel count, so aim the scale at the limit (with a margin).
    scale = 1.0
    while True:
        scale *= min(0.9, (limit_bytes / size) ** 0.5 * 0.92)
        width, height = round(img.width * scale), round(img.height * scale)
        if min(width, height) < _MIN_SIDE:
            raise DeliveryError(f"image does not fit in {limit_bytes} bytes")
        encoded = _encode_webp(img.resize((width, height), Image.Resampling.LANCZOS), quality)
        log.debug("re-encoded image at %dx%d, quality %d: %d bytes", width, height, quality, len(encoded))
        if len(encoded) <= limit_bytes:
            return encoded, "webp"
        # `scale` is relative to the original; the next factor corrects from this attempt's size.
        size = len(encoded)


async def fit_for_upload_async(image: ImageData, limit_bytes: int) -> tuple[bytes, str]:
    """`fit_for_upload` in a worker thread."""
    return await asyncio.to_thread(fit_for_upload, image, limit_bytes)
