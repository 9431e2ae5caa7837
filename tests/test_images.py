"""Image decoding, inspection and fitting under an upload limit."""

from __future__ import annotations

import base64
import gc
import io
import os
import sys
import tracemalloc
from collections.abc import Iterator

import aiohttp.payload
import pytest
from PIL import Image

from bot.errors import DeliveryError, MalformedResponseError
from bot.generation.images import (
    ImageData,
    SharedBytesIO,
    b64decode_strict,
    decode_b64,
    decode_data_url,
    decode_image_async,
    fit_for_upload,
    fit_for_upload_async,
    inspect_image,
    inspect_image_async,
    keep_within_budget,
    memory_budget,
    set_memory_budget,
)
from bot.throttle import ImageMemoryBudget
from bot.throttle.memory import STREAM_BYTES
from tests.fakes import make_bomb_png, make_png


def _encode(fmt: str, size: tuple[int, int] = (20, 10), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (200, 10, 10, 128)[: len(mode)]).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("fmt", "name", "ext"), [("PNG", "png", "png"), ("JPEG", "jpeg", "jpg"), ("WEBP", "webp", "webp")]
)
def test_inspect_accepts_png_jpeg_webp(fmt: str, name: str, ext: str) -> None:
    image = inspect_image(_encode(fmt))
    assert (image.format, image.width, image.height, image.extension) == (name, 20, 10, ext)


@pytest.mark.parametrize(
    "data",
    [b"", b"GIF89a....", b"<html>not an image</html>", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, _encode("GIF")],
)
def test_inspect_refuses_non_images(data: bytes) -> None:
    with pytest.raises(MalformedResponseError):
        inspect_image(data)


def test_inspect_refuses_truncated_png() -> None:
    png = make_png(64, 64, noise=True)
    with pytest.raises(MalformedResponseError):
        inspect_image(png[: len(png) // 2])


def test_decompression_bomb_refused_before_decoding() -> None:
    with pytest.raises(MalformedResponseError):
        inspect_image(make_bomb_png(100_000, 100_000))  # beyond Pillow's own limit too
    with pytest.raises(MalformedResponseError):
        inspect_image(make_bomb_png(9000, 9000))  # 81 MP: under Pillow's limit, over ours
    with pytest.raises(MalformedResponseError):
        inspect_image(make_png(100, 100), max_pixels=5000)


def test_repr_never_shows_the_payload() -> None:
    image = inspect_image(make_png(8, 8))
    assert "IHDR" not in repr(image) and "8x8" in repr(image)


def test_decode_data_url_and_b64() -> None:
    png = make_png(12, 7)
    encoded = base64.b64encode(png).decode()
    assert decode_data_url("data:image/png;base64," + encoded).width == 12
    assert decode_b64(encoded).height == 7
    # A mislabelled type is fine: the magic bytes decide.
    assert decode_data_url("data:image/jpeg;base64," + encoded).format == "png"


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/a.png",
        "data:image/png,rawbytes",
        "data:image/png;base64",
        "data:text/html;base64,PGh0bWw+",
        "data:image/png;base64,!!!!",
        "data:image/png;base64,iVBORw0KGgo",  # bad padding
        "data:image/png;base64,iVBO Rw0K",  # whitespace is not strict base64
        "data:image/png;base64,PGh0bWw+",  # valid base64, not an image
        "data:image/png;base64,aGVsbG8gd29ybGQ=é",
    ],
)
def test_decode_data_url_refuses(url: str) -> None:
    with pytest.raises(MalformedResponseError):
        decode_data_url(url)


def test_b64_strict_across_chunks() -> None:
    raw = bytes(range(256)) * 20_000  # several decode slices
    assert b64decode_strict(base64.b64encode(raw)) == raw
    broken = bytearray(base64.b64encode(raw))
    broken[len(broken) // 2] = ord("*")
    with pytest.raises(MalformedResponseError):
        b64decode_strict(bytes(broken))


async def test_async_wrappers() -> None:
    png = make_png(30, 20)
    assert (await decode_image_async(base64.b64encode(png).decode())).width == 30
    assert (await decode_image_async("data:image/png;base64," + base64.b64encode(png).decode())).height == 20
    assert (await inspect_image_async(png)).format == "png"
    with pytest.raises(MalformedResponseError):
        await decode_image_async("not base64!")


def test_fit_returns_original_when_it_fits() -> None:
    image = inspect_image(make_png(50, 50))
    assert fit_for_upload(image, 10_000_000) == (image.data, "png")


def test_fit_keeps_alpha() -> None:
    image = inspect_image(make_png(300, 300, noise=True, alpha=True))
    data, ext = fit_for_upload(image, len(image.data) - 1)
    assert ext == "webp" and len(data) < len(image.data)
    with Image.open(io.BytesIO(data)) as out:
        assert out.mode == "RGBA"


def test_fit_downscales_when_quality_is_not_enough() -> None:
    image = inspect_image(make_png(400, 400, noise=True))
    data, ext = fit_for_upload(image, 60_000)
    assert ext == "webp" and len(data) <= 60_000
    with Image.open(io.BytesIO(data)) as out:
        assert out.width < 400


def test_fit_impossible_raises_delivery_error() -> None:
    with pytest.raises(DeliveryError):
        fit_for_upload(inspect_image(make_png(300, 300, noise=True)), 100)


async def test_4096_noise_fits_under_10_mib() -> None:
    png = make_png(4096, 4096, noise=True)
    image = await inspect_image_async(png, max_pixels=64_000_000)
    assert image.size > 10 * 1024 * 1024  # in memory or spooled, as the process budget has room
    data, ext = await fit_for_upload_async(image, 10 * 1024 * 1024)
    assert ext == "webp" and len(data) <= 10 * 1024 * 1024
    assert isinstance(inspect_image(data), ImageData)


# --- the memory budget ----------------------------------------------------------------------------------


def test_within_budget_stays_in_memory_and_gives_its_bytes_back_when_dropped() -> None:
    budget = ImageMemoryBudget(STREAM_BYTES + 10_000)  # one stream slot, 10,000 bytes for images
    png = make_png(32, 32)
    kept = keep_within_budget(inspect_image(png), budget)
    assert kept.path is None and kept.data == png and budget.held == len(png)
    del kept
    gc.collect()
    assert budget.held == 0


def test_over_budget_is_spooled_to_a_file_removed_when_dropped() -> None:
    png = make_png(48, 48, noise=True)
    budget = ImageMemoryBudget(STREAM_BYTES + len(png) + 10)
    first = keep_within_budget(inspect_image(png), budget)
    second = keep_within_budget(inspect_image(png), budget)
    assert first.path is None
    assert second.path is not None and second.data == b"" and second.size == len(png)
    assert budget.held == len(png), "the spooled image is not charged"
    with second.open() as stream:
        assert stream.read() == png
    assert second.read_bytes() == png and (second.width, second.height, second.format) == (48, 48, "png")
    assert "spooled" in repr(second) and "iVBOR" not in repr(second)
    path = second.path
    del second
    gc.collect()
    assert not os.path.exists(path)


def test_fit_reencodes_a_spooled_image() -> None:
    png = make_png(256, 256, noise=True)
    spooled = keep_within_budget(inspect_image(png), ImageMemoryBudget(0))
    assert spooled.path is not None
    assert fit_for_upload(spooled, 10_000_000) == (png, "png")
    data, ext = fit_for_upload(spooled, len(png) // 2)
    assert ext == "webp" and len(data) <= len(png) // 2


@pytest.fixture
def tight_budget() -> Iterator[ImageMemoryBudget]:
    before = memory_budget()
    budget = set_memory_budget(0)
    try:
        yield budget
    finally:
        set_memory_budget(before.limit_bytes)


async def test_async_checks_keep_to_the_process_budget(tight_budget: ImageMemoryBudget) -> None:
    png = make_png(40, 40)
    decoded = await decode_image_async("data:image/png;base64," + base64.b64encode(png).decode())
    inspected = await inspect_image_async(png)
    assert decoded.path is not None and inspected.path is not None
    assert decoded.read_bytes() == png == inspected.read_bytes()
    set_memory_budget(None)
    assert (await inspect_image_async(png)).path is None


@pytest.mark.parametrize("stream", [io.BytesIO, SharedBytesIO])
def test_an_upload_payload_over_an_in_memory_image_copies_it_only_with_a_plain_bytesio(stream: type) -> None:
    """aiohttp's upload payload asks a BytesIO for its buffer, which makes a plain one copy the image for the
    whole upload; the shared stream hands out its bytes instead. Measured with tracemalloc."""
    data = os.urandom(4 * 1024 * 1024)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        payload = aiohttp.payload.get_payload(stream(data))
        grew = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert payload.size == len(data)
    if stream is io.BytesIO:
        assert grew >= len(data)  # the copy this test guards against
    else:
        assert grew < 64 * 1024


def test_a_shared_stream_reads_and_seeks_like_a_bytesio() -> None:
    data = bytes(range(256)) * 1000
    stream = SharedBytesIO(data)
    assert stream.read(10) == data[:10] and stream.tell() == 10
    stream.seek(0)
    assert stream.read() == data and bytes(stream.getbuffer()) == data
    with pytest.raises(io.UnsupportedOperation):
        stream.write(b"x")


def test_a_closed_shared_stream_lets_go_of_the_image() -> None:
    """An upload's request objects may outlive it in reference cycles: once closed, its stream must not be
    what keeps an image's bytes alive after the image (and its budget charge) are gone."""
    data = os.urandom(100_000)
    alone = sys.getrefcount(data)
    stream = SharedBytesIO(data)
    assert stream.read(10) == data[:10] and sys.getrefcount(data) > alone
    stream.close()
    assert sys.getrefcount(data) == alone and stream.closed
