"""The gateway client against the fake gateway over loopback (no mocked session)."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from pydantic import SecretStr

from bot.config import Settings
from bot.errors import (
    ContentPolicyError,
    DownloadError,
    GatewayAuthError,
    GatewayCreditsExhaustedError,
    GatewayTimeoutError,
    GatewayUnavailableError,
    GatewayUnknownModelError,
    GenerationFailedError,
    MalformedResponseError,
    ModelNotEnabledError,
    OperationLostError,
    RateLimitedError,
    RequestRejectedError,
    UpstreamError,
)
from bot.generation.gateway import GatewayClient
from bot.generation.images import ImageData, memory_budget, set_memory_budget
from bot.generation.polling import PollSchedule
from bot.throttle import ImageMemoryBudget
from bot.throttle.memory import STREAM_BYTES, STREAM_SHARE
from tests.fakes import FakeGateway, Reply, make_png

SYNC = "gemini-2.5-flash-image"
OPENAI = "gpt-image-1"
ASYNC = "stability-ai/sdxl"
FAL = "xai/grok-imagine-image"
FAST = PollSchedule.fixed(0.02)


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    async with FakeGateway() as fake:
        fake.configure_all(completion_delay=0.05)
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make_client(session: aiohttp.ClientSession, gw: FakeGateway, **kwargs: object) -> GatewayClient:
    options: dict = {"allow_loopback_http": True, "poll_deadline": 10.0, "rng": random.Random(0)}
    options.update(kwargs)
    return GatewayClient(session, gw.base_url, SecretStr(gw.api_key), **options)


@pytest.fixture
def client(session: aiohttp.ClientSession, gw: FakeGateway) -> GatewayClient:
    return make_client(session, gw)


# --- success paths ---------------------------------------------------------------------------------------


async def test_sync_data_url(client: GatewayClient, gw: FakeGateway) -> None:
    sub = await client.submit(SYNC, "a cat", {"number_of_images": 2, "aspect_ratio": "16:9"})
    assert sub.operation_id is None
    assert sub.images is not None and len(sub.images) == 2
    assert sub.images[0].format == "png" and (sub.images[0].width, sub.images[0].height) == (64, 64)
    (post,) = gw.posts
    assert post.path == "/v1/gateway/images/generate/"
    assert post.headers["Authorization"] == f"Bearer {gw.api_key}"
    assert post.json == {"model": SYNC, "prompt": "a cat", "number_of_images": 2, "aspect_ratio": "16:9"}


async def test_sync_b64_json(client: GatewayClient, gw: FakeGateway) -> None:
    gw.configure(OPENAI, b64_json=True, image_size=(32, 48))
    sub = await client.submit(OPENAI, "a dog", {"quality": "high"})
    assert sub.images is not None
    assert [(i.width, i.height) for i in sub.images] == [(32, 48)]


async def test_sync_answer_with_https_url_is_downloaded(client: GatewayClient, gw: FakeGateway) -> None:
    gw.files["x.png"] = make_png(10, 10)
    gw.enqueue(Reply.json({"data": [{"url": f"{gw.root_url}/files/x.png"}]}), method="POST")
    sub = await client.submit(SYNC, "p", {})
    assert sub.images is not None and sub.images[0].width == 10


async def test_async_through_polling(client: GatewayClient, gw: FakeGateway) -> None:
    sub = await client.submit(ASYNC, "a fox", {})
    assert sub.images is None and sub.operation_id
    seen: list[float] = []

    async def on_poll(elapsed: float) -> None:
        seen.append(elapsed)

    result = await client.wait_for_result(sub.operation_id, ASYNC, FAST, on_poll=on_poll)
    assert result.state == "done" and len(result.urls) == 1
    assert len(seen) == gw.polls_of(sub.operation_id) >= 1
    # The planner's estimate of the duration lies between the last pending answer and the done one.
    assert result.finished_after is not None and 0 < result.finished_after <= seen[-1]
    poll = gw.polls[-1]
    assert poll.path == f"/v1/gateway/images/generate/{sub.operation_id}/"
    assert poll.query == {"model": ASYNC}
    images = await client.download_all(result.urls)
    assert images[0].format == "png"
    # Result hosts are third parties: the API key never goes there.
    file_req = await gw.wait_for_request(lambda r: r.kind == "FILE")
    assert "Authorization" not in file_req.headers


@pytest.mark.parametrize("status", ["completed", "succeeded", "COMPLETED"])
async def test_done_statuses(client: GatewayClient, gw: FakeGateway, status: str) -> None:
    gw.configure(FAL, final_status=status, pending_status="IN_PROGRESS")
    sub = await client.submit(FAL, "p", {})
    assert sub.operation_id
    result = await client.wait_for_result(sub.operation_id, FAL, FAST)
    assert result.state == "done" and result.raw_status == status


async def test_done_with_inline_images(client: GatewayClient, gw: FakeGateway) -> None:
    gw.configure(ASYNC, inline_result=True)
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    result = await client.wait_for_result(sub.operation_id, ASYNC, FAST)
    assert result.urls == [] and len(result.images) == 1


async def test_resume_with_elapsed(client: GatewayClient, gw: FakeGateway) -> None:
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    gw.complete(sub.operation_id)
    result = await client.wait_for_result(sub.operation_id, ASYNC, FAST, elapsed=5.0)
    assert result.state == "done"


def test_from_settings() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        discord_token=SecretStr("t"),
        gateway_api_key=SecretStr("k"),
        gateway_base_url="https://example.test/v1/gateway/",
        poll_deadline_seconds=33,
        gateway_request_timeout=70,
    )
    client = GatewayClient.from_settings(SimpleNamespace(), settings)  # type: ignore[arg-type]
    assert client.poll_deadline == 33 and client.request_timeout == 70
    assert "k" not in repr(client).replace("https", "")


# --- HTTP errors -----------------------------------------------------------------------------------------


async def test_wrong_key_is_auth_error(session: aiohttp.ClientSession, gw: FakeGateway) -> None:
    client = GatewayClient(session, gw.base_url, SecretStr("sk-wrong-secret"), allow_loopback_http=True)
    with pytest.raises(GatewayAuthError) as info:
        await client.submit(SYNC, "p", {})
    assert info.value.status == 401
    assert "sk-wrong-secret" not in str(info.value) and "sk-wrong-secret" not in repr(info.value.params)


@pytest.mark.parametrize(
    ("reply", "error", "params"),
    [
        (Reply.error(402, "insufficient credits"), GatewayCreditsExhaustedError, {}),
        (Reply.error(403, "model not enabled for tenant"), ModelNotEnabledError, {"model": SYNC}),
        (Reply.error(404, "model not found"), GatewayUnknownModelError, {"model": SYNC}),
        (Reply.error(500, "internal"), UpstreamError, {}),
        (Reply.plain(502, "<html><title>502 Bad Gateway</title></html>"), UpstreamError, {}),
        (Reply.error(503, "unavailable"), UpstreamError, {}),
    ],
)
async def test_status_mapping(client: GatewayClient, gw: FakeGateway, reply: Reply, error: type, params: dict) -> None:
    gw.enqueue(reply, method="POST")
    with pytest.raises(error) as info:
        await client.submit(SYNC, "p", {})
    assert info.value.status == reply.status
    for key, value in params.items():
        assert info.value.params[key] == value


async def test_400_is_request_rejected_with_reason(client: GatewayClient, gw: FakeGateway) -> None:
    gw.enqueue(Reply.error(400, "prompt too long " + "x" * 500, code="invalid_request"), method="POST")
    with pytest.raises(RequestRejectedError) as info:
        await client.submit(SYNC, "p", {})
    assert info.value.status == 400
    reason = info.value.params["reason"]
    assert reason.startswith("prompt too long") and len(reason) <= 200


async def test_422_fastapi_body(client: GatewayClient, gw: FakeGateway) -> None:
    # The fake validates like the real gateway: a param the model does not list is a 422.
    with pytest.raises(RequestRejectedError) as info:
        await client.submit(ASYNC, "p", {"aspect_ratio": "1:1"})
    assert info.value.status == 422
    assert "aspect_ratio" in info.value.params["reason"]


async def test_gemini_more_than_four_images_rejected(client: GatewayClient) -> None:
    with pytest.raises(RequestRejectedError) as info:
        await client.submit(SYNC, "p", {"number_of_images": 5})
    assert "less than or equal to 4" in info.value.params["reason"]


@pytest.mark.parametrize(
    "reply",
    [
        Reply.content_policy(),
        Reply.error(400, "Your prompt was flagged by our safety system"),
        Reply.validation(["body", "prompt"], "rejected: content_policy_violation", "content_policy_violation"),
    ],
)
async def test_content_policy(client: GatewayClient, gw: FakeGateway, reply: Reply) -> None:
    gw.enqueue(reply, method="POST")
    with pytest.raises(ContentPolicyError) as info:
        await client.submit(SYNC, "p", {})
    assert info.value.status == reply.status


@pytest.mark.parametrize(
    "reply",
    [
        Reply.plain(400, "bad request, plain text"),
        Reply.json({"error": "something odd"}, status=400),
        Reply.json({"error": {"message": "nested", "type": "invalid"}}, status=400),
        Reply.json({"detail": "a string detail"}, status=400),
        Reply.json(["weird"], status=400),
        Reply.json({"unexpected": True}, status=400),
    ],
)
async def test_unknown_error_shapes_survive(client: GatewayClient, gw: FakeGateway, reply: Reply) -> None:
    gw.enqueue(reply, method="POST")
    with pytest.raises(RequestRejectedError) as info:
        await client.submit(SYNC, "p", {})
    assert info.value.status == 400 and isinstance(info.value.params["reason"], str)


async def test_429_carries_retry_after(client: GatewayClient, gw: FakeGateway) -> None:
    gw.enqueue(Reply.rate_limited(7), method="POST")
    with pytest.raises(RateLimitedError) as info:
        await client.submit(SYNC, "p", {})
    assert info.value.status == 429 and info.value.retry_after == 7


# --- malformed answers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        Reply.malformed_json(),
        Reply.json({"id": "img-1", "created": 1}),
        Reply.json({"data": []}),
        Reply.json({"data": [{"revised_prompt": "no image"}]}),
        Reply.json([1, 2]),
    ],
)
async def test_malformed_answers(client: GatewayClient, gw: FakeGateway, reply: Reply) -> None:
    gw.enqueue(reply, method="POST")
    with pytest.raises(MalformedResponseError):
        await client.submit(SYNC, "p", {})


@pytest.mark.parametrize(("payload", "b64_json"), [("bad_base64", False), ("bad_base64", True), ("not_image", False)])
async def test_bad_sync_payloads(client: GatewayClient, gw: FakeGateway, payload: str, b64_json: bool) -> None:
    gw.configure(SYNC, payload=payload, b64_json=b64_json)
    with pytest.raises(MalformedResponseError):
        await client.submit(SYNC, "p", {})


async def test_done_without_data_is_malformed(client: GatewayClient, gw: FakeGateway) -> None:
    gw.configure(ASYNC, done_without_data=True)
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    with pytest.raises(MalformedResponseError):
        await client.wait_for_result(sub.operation_id, ASYNC, FAST)


# --- POST retry rules ------------------------------------------------------------------------------------


async def test_post_not_retried_after_500(client: GatewayClient, gw: FakeGateway) -> None:
    gw.enqueue(Reply.error(500, "boom"), method="POST")
    with pytest.raises(UpstreamError):
        await client.submit(SYNC, "p", {})
    assert len(gw.posts) == 1


async def test_post_not_retried_after_timeout(session: aiohttp.ClientSession, gw: FakeGateway) -> None:
    client = make_client(session, gw, request_timeout=0.2)
    gw.enqueue(Reply.slow(30), method="POST")
    with pytest.raises(GatewayTimeoutError) as info:
        await client.submit(SYNC, "p", {})
    assert info.value.status is None
    assert len(gw.posts) == 1


async def test_post_retried_when_connection_refused(session: aiohttp.ClientSession) -> None:
    """Nothing was sent, so a retry is safe: the fake starts listening on the second connection attempt."""
    port = FakeGateway.free_port()
    fake = FakeGateway(port=port)
    attempts = 0

    async def on_connect_start(*_: object) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 2:
            await fake.start()

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_start.append(on_connect_start)
    try:
        async with aiohttp.ClientSession(trace_configs=[trace]) as traced:
            client = GatewayClient(traced, f"http://127.0.0.1:{port}/v1/gateway", SecretStr(fake.api_key))
            sub = await client.submit(SYNC, "p", {})
        assert sub.images and attempts == 2
        assert len(fake.posts) == 1
    finally:
        await fake.close()


async def test_post_gives_up_when_nothing_listens(session: aiohttp.ClientSession) -> None:
    client = GatewayClient(session, f"http://127.0.0.1:{FakeGateway.free_port()}/v1/gateway", SecretStr("k"))
    with pytest.raises(GatewayUnavailableError) as info:
        await client.submit(SYNC, "p", {})
    assert info.value.status is None


# --- polling ---------------------------------------------------------------------------------------------


async def test_poll_retries_transient_503_and_429(client: GatewayClient, gw: FakeGateway) -> None:
    gw.enqueue(Reply.error(503, "busy"), method="GET")
    gw.enqueue(Reply.rate_limited(0.05), method="GET")
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    result = await client.wait_for_result(sub.operation_id, ASYNC, FAST)
    assert result.state == "done"
    assert len(gw.polls) >= 3  # two refused, then answered


async def test_poll_retries_timeouts(session: aiohttp.ClientSession, gw: FakeGateway) -> None:
    client = make_client(session, gw, request_timeout=0.2)
    gw.enqueue(Reply.slow(30), method="GET")
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    result = await client.wait_for_result(sub.operation_id, ASYNC, FAST)
    assert result.state == "done"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply.error(401, "bad key"), GatewayAuthError),
        (Reply.error(402, "no credits"), GatewayCreditsExhaustedError),
        (Reply.error(403, "not enabled"), ModelNotEnabledError),
        (Reply.error(404, "gone"), OperationLostError),
    ],
)
async def test_poll_final_errors(client: GatewayClient, gw: FakeGateway, reply: Reply, error: type) -> None:
    gw.enqueue(reply, method="GET")
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    with pytest.raises(error):
        await client.wait_for_result(sub.operation_id, ASYNC, FAST)
    assert len(gw.polls) == 1


async def test_poll_deadline(session: aiohttp.ClientSession, gw: FakeGateway) -> None:
    client = make_client(session, gw, poll_deadline=0.3)
    gw.configure(ASYNC, completion_delay=3600)
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    with pytest.raises(GatewayTimeoutError) as info:
        await client.wait_for_result(sub.operation_id, ASYNC, FAST)
    assert info.value.status is None


async def test_poll_deadline_while_failing(session: aiohttp.ClientSession, gw: FakeGateway) -> None:
    client = make_client(session, gw, poll_deadline=0.3)
    gw.enqueue(Reply.error(500, "down"), method="GET", times=None)
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    with pytest.raises(GatewayTimeoutError):
        await client.wait_for_result(sub.operation_id, ASYNC, FAST)


async def test_failed_status_raises_with_message(client: GatewayClient, gw: FakeGateway) -> None:
    gw.configure(ASYNC, final_status="failed", failure_message="model crashed: CUDA OOM")
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    with pytest.raises(GenerationFailedError) as info:
        await client.wait_for_result(sub.operation_id, ASYNC, FAST)
    assert "CUDA OOM" in info.value.params["reason"]


async def test_failed_for_content_policy(client: GatewayClient, gw: FakeGateway) -> None:
    gw.configure(ASYNC, final_status="failed", failure_message="content_policy_violation: prompt refused")
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    with pytest.raises(ContentPolicyError):
        await client.wait_for_result(sub.operation_id, ASYNC, FAST)


@pytest.mark.parametrize("status", ["canceled", "cancelled", "ABORTED", "error"])
async def test_failure_like_statuses(client: GatewayClient, gw: FakeGateway, status: str) -> None:
    gw.configure(ASYNC, final_status=status)
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    with pytest.raises(GenerationFailedError):
        await client.wait_for_result(sub.operation_id, ASYNC, FAST)


async def test_unknown_status_keeps_polling_and_logs_once(
    client: GatewayClient, gw: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    gw.configure(ASYNC, pending_status="warming_up")
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    with caplog.at_level(logging.WARNING, logger="bot.generation.gateway"):
        for _ in range(3):
            result = await client.poll(sub.operation_id, ASYNC)
            assert result.state == "pending" and result.raw_status == "warming_up"
    assert sum("warming_up" in r.getMessage() for r in caplog.records) == 1
    gw.complete(sub.operation_id)
    result = await client.wait_for_result(sub.operation_id, ASYNC, FAST)
    assert result.state == "done"


@pytest.mark.parametrize("status", ["processing", "starting", "queued", "IN_QUEUE", "IN_PROGRESS"])
async def test_queue_like_statuses_are_pending(client: GatewayClient, gw: FakeGateway, status: str) -> None:
    gw.configure(ASYNC, pending_status=status, completion_delay=3600)
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    assert (await client.poll(sub.operation_id, ASYNC)).state == "pending"


async def test_unclassifiable_final_status_times_out(session: aiohttp.ClientSession, gw: FakeGateway) -> None:
    client = make_client(session, gw, poll_deadline=0.3)
    gw.configure(ASYNC, final_status="mystery")
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    with pytest.raises(GatewayTimeoutError):
        await client.wait_for_result(sub.operation_id, ASYNC, FAST)


# --- downloads -------------------------------------------------------------------------------------------


async def test_http_download_refused_unless_loopback_allowed(session: aiohttp.ClientSession, gw: FakeGateway) -> None:
    gw.files["a.png"] = make_png(8, 8)
    strict = make_client(session, gw, allow_loopback_http=False)
    with pytest.raises(DownloadError):
        await strict.download(f"{gw.root_url}/files/a.png")
    lenient = make_client(session, gw)
    assert (await lenient.download(f"{gw.root_url}/files/a.png")).width == 8
    for url in ("http://example.com/a.png", "ftp://127.0.0.1/a.png", "file:///etc/passwd", "not a url"):
        with pytest.raises(DownloadError):
            await lenient.download(url)
    assert [r for r in gw.requests if r.kind == "FILE"] and len(gw.requests) == 1


async def test_non_loopback_result_url_refused(client: GatewayClient, gw: FakeGateway) -> None:
    gw.configure(ASYNC, result_url_base="http://images.example.com/files")
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    result = await client.wait_for_result(sub.operation_id, ASYNC, FAST)
    with pytest.raises(DownloadError):
        await client.download_all(result.urls)


async def test_download_404(client: GatewayClient, gw: FakeGateway) -> None:
    gw.configure(ASYNC, result_missing=True)
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    result = await client.wait_for_result(sub.operation_id, ASYNC, FAST)
    with pytest.raises(DownloadError) as info:
        await client.download(result.urls[0])
    assert info.value.status == 404


async def test_download_retries_a_5xx(client: GatewayClient, gw: FakeGateway) -> None:
    gw.files["r.png"] = make_png(9, 9)
    gw.enqueue(Reply.plain(503, "busy"), method="FILE")
    assert (await client.download(f"{gw.root_url}/files/r.png")).width == 9


async def test_download_size_cap(session: aiohttp.ClientSession, gw: FakeGateway) -> None:
    client = make_client(session, gw, download_max_bytes=10_000)
    gw.files["big.png"] = make_png(200, 200, noise=True)
    with pytest.raises(DownloadError):
        await client.download(f"{gw.root_url}/files/big.png")
    assert sum(r.kind == "FILE" for r in gw.requests) == 1  # too large is final, not retried


async def test_download_not_an_image(client: GatewayClient, gw: FakeGateway) -> None:
    gw.configure(ASYNC, result_bytes=b"<html>expired</html>")
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    result = await client.wait_for_result(sub.operation_id, ASYNC, FAST)
    with pytest.raises(MalformedResponseError):
        await client.download_all(result.urls)


async def test_download_bomb_refused(client: GatewayClient, gw: FakeGateway) -> None:
    gw.configure(ASYNC, payload="bomb")
    sub = await client.submit(ASYNC, "p", {})
    assert sub.operation_id
    result = await client.wait_for_result(sub.operation_id, ASYNC, FAST)
    with pytest.raises(MalformedResponseError):
        await client.download(result.urls[0])


async def test_download_all_is_concurrent(client: GatewayClient, gw: FakeGateway) -> None:
    for i in range(3):
        gw.files[f"c{i}.png"] = make_png(5 + i, 5)
    # The first file is held until the others were requested: only concurrent downloads get there.
    gate = asyncio.Event()
    gw.enqueue(Reply.held(gate), method="FILE", path_contains="c0")
    task = asyncio.create_task(client.download_all([f"{gw.root_url}/files/c{i}.png" for i in range(3)]))
    await gw.wait_for_request(lambda r: "c1" in r.path)
    await gw.wait_for_request(lambda r: "c2" in r.path)
    gate.set()
    images = await task
    assert [i.width for i in images] == [5, 6, 7]


# --- downloads streamed within the image memory budget ----------------------------------------------------


@pytest.fixture
def small_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ImageMemoryBudget]:
    """A budget of one stream slot and 64 KiB for images, and temporary files in `tmp_path` (so a test sees
    exactly its own)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = memory_budget()
    budget = set_memory_budget(STREAM_BYTES + 64 * 1024)
    assert budget.image_limit == 64 * 1024
    try:
        yield budget
    finally:
        set_memory_budget(before.limit_bytes)


def _spool_files(tmp_path: Path) -> list[Path]:
    return list(tmp_path.glob("imagine-*"))


async def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait until `condition()` holds (it changes in the spool worker thread, which has no event to wait on)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - set by a worker thread: no event to wait on
            await asyncio.sleep(0.01)
    assert condition(), what


async def _check_spooled(task: asyncio.Task[ImageData], png: bytes) -> None:
    """The downloaded image is the whole file, kept in its spool file (checked here, so that no local of
    the test keeps the image alive after)."""
    image = await task
    assert image.path is not None and image.size == len(png) and (image.width, image.height) == (400, 400)
    assert image.read_bytes() == png


async def test_a_download_beyond_the_budget_streams_into_its_spool_file(
    client: GatewayClient, gw: FakeGateway, small_budget: ImageMemoryBudget, tmp_path: Path
) -> None:
    png = make_png(400, 400, noise=True)  # ~480 KB: over the budget
    gw.files["big.png"] = png
    gate = asyncio.Event()
    gw.hold_file("big.png", 300 * 1024, gate)
    task = asyncio.create_task(client.download(f"{gw.root_url}/files/big.png"))
    # While the rest of the body is held back, what came so far is already on disk, not in memory.
    await _until(
        lambda: any(p.stat().st_size >= 256 * 1024 for p in _spool_files(tmp_path)), "the first part is spooled"
    )
    assert small_budget.held == 0 and small_budget.peak <= small_budget.image_limit  # type: ignore[operator]
    gate.set()
    await _check_spooled(task, png)


async def test_a_download_within_the_budget_stays_in_memory_charged_to_it(
    client: GatewayClient, gw: FakeGateway, small_budget: ImageMemoryBudget, tmp_path: Path
) -> None:
    png = make_png(40, 40, noise=True)
    gw.files["small.png"] = png
    image = await client.download(f"{gw.root_url}/files/small.png")
    assert image.path is None and image.read_bytes() == png and small_budget.held == len(png)
    assert _spool_files(tmp_path) == []


async def test_a_body_that_is_not_an_image_is_refused_at_its_first_bytes(
    client: GatewayClient, gw: FakeGateway, small_budget: ImageMemoryBudget, tmp_path: Path
) -> None:
    gw.files["page.png"] = b"<html>" + b"x" * (2 * 1024 * 1024)
    gw.hold_file("page.png", 256 * 1024, asyncio.Event())  # the rest never comes
    with pytest.raises(MalformedResponseError):
        await asyncio.wait_for(client.download(f"{gw.root_url}/files/page.png"), 10)
    assert small_budget.held == 0
    await _until(lambda: _spool_files(tmp_path) == [], "nothing left on disk")


async def test_a_cancelled_download_gives_back_its_file_and_its_budget(
    client: GatewayClient, gw: FakeGateway, small_budget: ImageMemoryBudget, tmp_path: Path
) -> None:
    gw.files["big.png"] = make_png(400, 400, noise=True)
    gw.hold_file("big.png", 300 * 1024, asyncio.Event())
    task = asyncio.create_task(client.download(f"{gw.root_url}/files/big.png"))
    await _until(lambda: bool(_spool_files(tmp_path)), "spooling started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert small_budget.held == 0
    await _until(lambda: _spool_files(tmp_path) == [], "the spool file is removed")


async def test_concurrent_downloads_stay_within_the_budget_and_beyond_it_are_spooled(
    client: GatewayClient, gw: FakeGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty downloads at once under a budget of two stream slots and 6 MiB for images (the images make
    9.6 MB): two are in flight at a time, the others wait for a slot without a connection or a buffer;
    images and slots never exceed the budget; those beyond it are spooled, and every one is delivered whole
    and charged exactly its size while it lives."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = memory_budget()
    budget = set_memory_budget(2 * STREAM_SHARE * STREAM_BYTES)
    try:
        assert budget.stream_slots == 2
        pngs = {f"r{i}.png": make_png(400, 400, noise=True) + bytes([i]) for i in range(20)}  # ~480 KB each
        gate = asyncio.Event()
        for name, png in pngs.items():
            gw.files[name] = png
            gw.hold_file(name, 100 * 1024, gate)
        tasks = [asyncio.create_task(client.download(f"{gw.root_url}/files/{name}")) for name in pngs]
        await _until(lambda: budget.streams_waiting == 18, "all but two wait for a slot")
        assert budget.streams == 2
        assert len([r for r in gw.requests if r.kind == "FILE"]) == 2  # the waiting ones have not connected
        gate.set()
        images = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert [image.read_bytes() for image in images] == list(pngs.values())
        in_memory = [image for image in images if image.path is None]
        spooled = [image for image in images if image.path is not None]
        assert in_memory and spooled  # 6 MiB holds some of the 9.6 MB, not all
        assert budget.held == sum(image.size for image in in_memory) <= budget.image_limit  # type: ignore[operator]
        assert budget.peak_total <= budget.limit_bytes  # type: ignore[operator]
        assert budget.streams == 0 and budget.streams_waiting == 0
        del images, in_memory, spooled, tasks
        gc.collect()
        assert budget.held == 0
        await _until(lambda: _spool_files(tmp_path) == [], "every spool file is removed")
    finally:
        set_memory_budget(before.limit_bytes)
