"""The image gateway client (see shared/docs/image-api.md): submit, poll, download, with typed errors.

It knows nothing of Discord. Every failure is one of the `GatewayError` subclasses of `bot.errors`, chosen
by situation, so the job code can decide on refunds and the adapter on wording. Two rules shape it:

* A POST is never retried once it may have reached the gateway: a second POST is a second charge. Only a
  connection that failed before anything was sent is retried.
* Polls are idempotent GETs: transient failures are retried with jittered backoff until the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import aiohttp
from pydantic import SecretStr
from yarl import URL

from bot.errors import (
    ContentPolicyError,
    DownloadError,
    GatewayAuthError,
    GatewayCreditsExhaustedError,
    GatewayError,
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
from bot.generation.images import ImageData, decode_image_async, inspect_body_async, memory_budget, sniff_format
from bot.generation.polling import PollSchedule
from bot.net import refusal_of
from bot.throttle import RequestRateLimiter
from bot.throttle.rate import SUBMIT_PRIORITY
from bot.throttle.spool import HEAD_BYTES, SpooledBody, SpoolingBuffer

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger(__name__)

PollState = Literal["done", "pending", "failed"]

DONE_STATUSES = frozenset({"completed", "succeeded", "success", "done"})
FAILED_STATUSES = frozenset({"failed", "failure", "error", "canceled", "cancelled", "aborted", "expired"})
PENDING_STATUSES = frozenset({"processing", "starting", "queued", "in_queue", "in_progress", "pending", "running"})

_POLICY_RE = re.compile(r"content[ _-]?polic|safety|moderation|nsfw|flagged", re.IGNORECASE)
REASON_MAX_CHARS = 200

# Connection failures before the request was sent: retried this many times (delays in seconds).
_CONNECT_RETRY_DELAYS = (0.2, 0.6)
# Poll retries after a transient failure: exponential from BASE, capped, with full jitter.
_POLL_BACKOFF_BASE = 0.5
_POLL_BACKOFF_CAP = 15.0
_DOWNLOAD_ATTEMPTS = 3
_MAX_REDIRECTS = 3
_CHUNK = 256 * 1024
# A sync answer carries up to four base64 images (4/3 of their size) plus JSON around them.
_JSON_BODY_FACTOR = 6


@dataclass(frozen=True)
class Submission:
    """What the POST returned: decoded images (sync models) or an operation id to poll (async models)."""

    images: list[ImageData] | None
    operation_id: str | None
    raw_status: str | None = None


@dataclass(frozen=True)
class PollResult:
    """One poll's answer. `urls` are results still to download; `images` came inline (data: / b64_json)."""

    state: PollState
    urls: list[str] = field(default_factory=list)
    images: list[ImageData] = field(default_factory=list)
    message: str | None = None
    raw_status: str | None = None
    # Set by `wait_for_result` on a done result: the best estimate of when the operation finished, in
    # seconds since submit (midway between the last "pending" answer and the "done" one). This, not the
    # time the bot noticed, is what the poll planner should record: noticing late would teach it to poll
    # late.
    finished_after: float | None = None


def _trim(text: str, limit: int = REASON_MAX_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_fields(body: bytes) -> tuple[str | None, str]:
    """(code, message) from any error body shape the gateway or a proxy in front of it may send."""
    try:
        parsed: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body[:2000].decode("utf-8", "replace")
        # An HTML error page from a proxy says nothing useful; keep its title at most.
        title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        if title:
            return None, _trim(title.group(1))
        return None, _trim(re.sub(r"<[^>]+>", " ", text))
    return _fields_from_json(parsed)


def _fields_from_json(parsed: Any) -> tuple[str | None, str]:
    if isinstance(parsed, str):
        return None, _trim(parsed)
    if isinstance(parsed, list):
        # FastAPI validation errors: [{"loc": [...], "msg": ..., "type": ...}]
        parts = []
        codes = []
        for item in parsed[:5]:
            if isinstance(item, dict):
                loc = ".".join(str(x) for x in item.get("loc", []) if x != "body")
                msg = str(item.get("msg") or item.get("message") or "")
                parts.append(f"{loc}: {msg}" if loc else msg)
                if item.get("type"):
                    codes.append(str(item["type"]))
            else:
                parts.append(str(item))
        return (",".join(codes) or None), _trim("; ".join(p for p in parts if p))
    if not isinstance(parsed, dict):
        return None, _trim(str(parsed))
    for key in ("detail", "error", "errors"):
        if key in parsed and parsed[key] not in (None, "", [], {}):
            inner = parsed[key]
            if isinstance(inner, dict):
                code = inner.get("code", inner.get("type"))
                message = inner.get("message", inner.get("msg", inner.get("detail")))
                if message is None:
                    return (str(code) if code is not None else None), _trim(json.dumps(inner)[:400])
                if not isinstance(message, str):
                    _, message = _fields_from_json(message)
                return (str(code) if code is not None else None), _trim(message)
            return _fields_from_json(inner)
    code = parsed.get("code", parsed.get("type"))
    message = parsed.get("message", parsed.get("msg"))
    if isinstance(message, str):
        return (str(code) if code is not None else None), _trim(message)
    return (str(code) if code is not None else None), ""


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def is_content_policy(*texts: str | None) -> bool:
    """Whether a gateway code or message speaks of a content policy / safety refusal."""
    return any(t and _POLICY_RE.search(t) for t in texts)


def _is_loopback_host(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class GatewayClient:
    """A client of the image gateway over one shared aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: SecretStr,
        *,
        request_timeout: float = 120.0,
        download_max_bytes: int = 50 * 1024 * 1024,
        allow_loopback_http: bool = False,
        poll_deadline: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        download_session: aiohttp.ClientSession | None = None,
        limiter: RequestRateLimiter | None = None,
    ) -> None:
        self._session = session
        # Result URLs come from the gateway's answers, so they are fetched through a session that refuses
        # private addresses (`bot.net.guarded_session`); the gateway itself may well sit on a private one.
        self._downloads = download_session or session
        self._base = base_url.rstrip("/")
        self._api_key = api_key
        self.request_timeout = request_timeout
        self.download_max_bytes = download_max_bytes
        self.allow_loopback_http = allow_loopback_http
        self.poll_deadline = poll_deadline
        self._clock = clock
        self._rng = rng or random.Random()
        self._warned_statuses: set[tuple[str, str]] = set()
        self.on_status: Callable[[str], None] | None = None  # each exchange's HTTP status, or "error" (metrics)
        self._limiter = limiter  # caps POSTs and polls (not result downloads: those go to other hosts)

    @classmethod
    def from_settings(
        cls,
        session: aiohttp.ClientSession,
        settings: Settings,
        *,
        download_session: aiohttp.ClientSession | None = None,
    ) -> GatewayClient:
        """A client configured by the gateway_* / poll_* / download_* settings."""
        return cls(
            session,
            settings.gateway_base_url,
            settings.gateway_api_key,
            request_timeout=settings.gateway_request_timeout,
            download_max_bytes=settings.download_max_bytes,
            allow_loopback_http=settings.allow_loopback_http,
            poll_deadline=settings.poll_deadline_seconds,
            download_session=download_session,
            limiter=(
                RequestRateLimiter(settings.gateway_max_requests_per_second)
                if settings.gateway_max_requests_per_second
                else None
            ),
        )

    def __repr__(self) -> str:
        return f"GatewayClient(base_url={self._base!r})"

    # --- plumbing ----------------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key.get_secret_value()}", "Accept": "application/json"}

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.request_timeout, sock_connect=min(10.0, self.request_timeout))

    def _redact(self, text: str) -> str:
        key = self._api_key.get_secret_value()
        return text.replace(key, "***") if key and key in text else text

    async def _read_capped(self, resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
        """The body, refusing more than `limit` bytes (announced or actually sent)."""
        if resp.content_length is not None and resp.content_length > limit:
            raise MalformedResponseError(
                f"{what}: body of {resp.content_length} bytes is too large", status=resp.status
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise MalformedResponseError(f"{what}: body larger than {limit} bytes", status=resp.status)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _call(
        self,
        method: str,
        url: str,
        what: str,
        *,
        json_body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        priority: float = 0.0,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One HTTP exchange, transport failures mapped to domain errors.

        Under a request-rate cap, waits for its turn first (`priority`: higher goes first).
        `aiohttp.ClientConnectorError` is left to the caller: it is the one failure where nothing was sent.
        """
        if self._limiter is not None:
            await self._limiter.acquire(priority)
        limit = self.download_max_bytes * _JSON_BODY_FACTOR
        try:
            async with self._session.request(
                method,
                url,
                json=json_body,
                params=params,
                headers=self._headers(),
                timeout=self._timeout(),
                allow_redirects=False,
            ) as resp:
                if self.on_status is not None:
                    self.on_status(str(resp.status))
                body = await self._read_capped(resp, limit, what)
                return resp.status, resp.headers, body
        except aiohttp.ClientConnectorError:
            if self.on_status is not None:
                self.on_status("error")
            raise
        except TimeoutError as exc:  # aiohttp's timeouts subclass the builtin TimeoutError
            raise GatewayTimeoutError(f"{what}: no answer within {self.request_timeout:g}s", status=None) from exc
        except aiohttp.ClientError as exc:
            raise GatewayUnavailableError(f"{what}: {type(exc).__name__}", status=None) from exc

    def _raise_for_status(
        self, status: int, headers: Mapping[str, str], body: bytes, what: str, model: str
    ) -> NoReturn:
        code, message = _error_fields(body)
        message = self._redact(message)
        detail = f"{what}: HTTP {status}" + (f" ({code})" if code else "") + (f": {message}" if message else "")
        if status == 401:
            raise GatewayAuthError(detail, status=status)
        if status == 402:
            raise GatewayCreditsExhaustedError(detail, status=status)
        if status == 403:
            raise ModelNotEnabledError(detail, status=status, model=model)
        if status == 404:
            raise GatewayUnknownModelError(detail, status=status, model=model)
        if status == 429:
            raise RateLimitedError(detail, retry_after=_retry_after(headers))
        if status >= 500:
            raise UpstreamError(detail, status=status)
        if status in (400, 422) and is_content_policy(code, message):
            raise ContentPolicyError(detail, status=status)
        if 400 <= status < 500:
            raise RequestRejectedError(detail, status=status, reason=message or f"HTTP {status}")
        raise MalformedResponseError(detail, status=status)

    @staticmethod
    def _parse_json(body: bytes, status: int, what: str) -> dict[str, Any]:
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedResponseError(f"{what}: answer is not JSON", status=status) from exc
        if not isinstance(parsed, dict):
            raise MalformedResponseError(f"{what}: answer is not a JSON object", status=status)
        return parsed

    async def _images_from_data(
        self, data: Any, status: int, what: str, *, download_urls: bool
    ) -> tuple[list[ImageData], list[str]]:
        """Inline images decoded (off the loop) and remote URLs, from a `data` list."""
        if not isinstance(data, list) or not data:
            raise MalformedResponseError(f"{what}: no images in the answer", status=status)
        inline: list[str] = []
        urls: list[str] = []
        for item in data:
            if isinstance(item, str):
                item = {"url": item}
            if not isinstance(item, dict):
                raise MalformedResponseError(f"{what}: an image entry is not an object", status=status)
            b64 = item.get("b64_json")
            url = item.get("url")
            if isinstance(b64, str) and b64:
                inline.append(b64)
            elif isinstance(url, str) and url.startswith("data:"):
                inline.append(url)
            elif isinstance(url, str) and url.startswith(("https://", "http://")):
                urls.append(url)
            else:
                raise MalformedResponseError(f"{what}: an image entry has neither url nor b64_json", status=status)
        images = list(await asyncio.gather(*(decode_image_async(v) for v in inline)))
        if download_urls and urls:
            images.extend(await self.download_all(urls))
            urls = []
        return images, urls

    # --- submit ------------------------------------------------------------------------------------------

    async def submit(self, model: str, prompt: str, params: dict[str, Any]) -> Submission:
        """POST a generation. Sync models: the checked images. Async models: the operation id to poll.

        Never retried once the request may have reached the gateway (a retry would charge twice); only a
        connection refused before sending is retried.
        """
        body = {**params, "model": model, "prompt": prompt}
        url = f"{self._base}/images/generate/"
        what = f"POST /images/generate/ ({model})"
        for attempt in range(len(_CONNECT_RETRY_DELAYS) + 1):
            try:
                status, headers, raw = await self._call("POST", url, what, json_body=body, priority=SUBMIT_PRIORITY)
                break
            except aiohttp.ClientConnectorError as exc:
                if attempt == len(_CONNECT_RETRY_DELAYS):
                    raise GatewayUnavailableError(f"{what}: cannot connect", status=None) from exc
                log.warning("gateway connection failed before sending (%s); retrying", type(exc).__name__)
                await asyncio.sleep(_CONNECT_RETRY_DELAYS[attempt])
        if not 200 <= status < 300:
            self._raise_for_status(status, headers, raw, what, model)
        answer = self._parse_json(raw, status, what)
        operation_id = answer.get("operation_id")
        raw_status = answer.get("status") if isinstance(answer.get("status"), str) else None
        if answer.get("data") is not None:
            images, _ = await self._images_from_data(answer["data"], status, what, download_urls=True)
            return Submission(images=images, operation_id=None, raw_status=raw_status)
        if isinstance(operation_id, str) and operation_id.strip():
            if raw_status and raw_status.lower() in FAILED_STATUSES:
                self._raise_failure(self._failure_message(answer, raw_status), what)
            log.info("gateway accepted %s as operation %s (%s)", model, operation_id, raw_status)
            return Submission(images=None, operation_id=operation_id, raw_status=raw_status)
        raise MalformedResponseError(f"{what}: answer has neither data nor operation_id", status=status)

    # --- polling -----------------------------------------------------------------------------------------

    @staticmethod
    def _failure_message(answer: dict[str, Any], raw_status: str | None) -> str:
        for key in ("error", "message", "detail", "logs_error"):
            value = answer.get(key)
            if value not in (None, "", [], {}):
                _, message = _fields_from_json({key: value}) if key != "message" else (None, _trim(str(value)))
                if message:
                    return message
        return f"status {raw_status}" if raw_status else "failed"

    def _raise_failure(self, message: str, what: str) -> NoReturn:
        message = self._redact(message)
        if is_content_policy(message):
            raise ContentPolicyError(f"{what}: {message}", status=None)
        raise GenerationFailedError(f"{what}: {message}", status=None, reason=_trim(message))

    async def poll(self, operation_id: str, model: str, *, priority: float = 0.0) -> PollResult:
        """One GET of an operation's state. HTTP errors raise; a failed operation is returned, not raised.

        `priority` orders polls waiting under a request-rate cap (the chance the operation has finished).
        """
        url = f"{self._base}/images/generate/{operation_id}/"
        what = f"GET /images/generate/{operation_id}/ ({model})"
        try:
            status, headers, raw = await self._call("GET", url, what, params={"model": model}, priority=priority)
        except aiohttp.ClientConnectorError as exc:
            raise GatewayUnavailableError(f"{what}: cannot connect", status=None) from exc
        if status == 404:
            # The operation is gone (expired or never stored there): not an unknown model.
            raise OperationLostError(f"{what}: HTTP 404 (operation not found)", status=status)
        if not 200 <= status < 300:
            self._raise_for_status(status, headers, raw, what, model)
        answer = self._parse_json(raw, status, what)
        raw_status = answer.get("status")
        raw_status = raw_status if isinstance(raw_status, str) else None
        normalized = (raw_status or "").strip().lower()
        has_data = answer.get("data") not in (None, [])
        has_error = any(answer.get(k) not in (None, "", [], {}) for k in ("error", "detail"))

        # A finished status with images wins over a stray error field: the images were made and paid for.
        if normalized in DONE_STATUSES:
            images, urls = await self._images_from_data(answer.get("data"), status, what, download_urls=False)
            return PollResult("done", urls=urls, images=images, raw_status=raw_status)
        if normalized in FAILED_STATUSES or has_error:
            return PollResult("failed", message=self._failure_message(answer, raw_status), raw_status=raw_status)
        if not normalized and has_data:
            # No status at all but images: treat as done rather than poll a finished job until the deadline.
            images, urls = await self._images_from_data(answer.get("data"), status, what, download_urls=False)
            return PollResult("done", urls=urls, images=images, raw_status=raw_status)
        if normalized not in PENDING_STATUSES:
            key = (operation_id, normalized)
            if key not in self._warned_statuses:
                if len(self._warned_statuses) > 10_000:
                    self._warned_statuses.clear()
                self._warned_statuses.add(key)
                log.warning("operation %s: unknown status %r, still polling", operation_id, raw_status)
        return PollResult("pending", raw_status=raw_status)

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        ceiling = min(_POLL_BACKOFF_CAP, _POLL_BACKOFF_BASE * 2 ** (failures - 1))
        return ceiling / 2 + self._rng.random() * ceiling / 2

    async def wait_for_result(
        self,
        operation_id: str,
        model: str,
        schedule: PollSchedule,
        *,
        elapsed: float = 0.0,
        on_poll: Callable[[float], Awaitable[None]] | None = None,
    ) -> PollResult:
        """Poll following `schedule` until the operation is done, and return that (done) result.

        `elapsed` is the time since submit (when resuming after a restart). Transient failures (network,
        timeouts, 429, 5xx) are retried; 401/402/403/404 and a failed operation raise at once; after
        `poll_deadline` seconds since submit, `GatewayTimeoutError`. `on_poll(elapsed)` runs after each
        answered poll.

        An operation resumed after its deadline (the bot was down longer than that) is polled at once,
        never failed unseen: it may have finished meanwhile, and been paid for. If it is still running,
        the deadline counts from the resumption.
        """
        now = self._clock()
        started = now - max(0.0, elapsed)
        deadline = started + self.poll_deadline
        resumed_overdue = deadline <= now
        if resumed_overdue:
            deadline = now + self.poll_deadline
        failures = 0
        last_error: GatewayError | None = None
        last_pending = max(0.0, elapsed)  # the operation was not finished before this (since submit)
        backoff = 0.0
        while True:
            now = self._clock()
            if now >= deadline:
                reason = f" (last error: {type(last_error).__name__})" if last_error else ""
                raise GatewayTimeoutError(
                    f"operation {operation_id} ({model}) not done after {self.poll_deadline:g}s{reason}",
                    status=None,
                ) from last_error
            if resumed_overdue:
                delay, resumed_overdue = 0.0, False  # look right away: it has had all the time it was given
            else:
                delay = max(schedule.next_delay(now - started), backoff)
            # Never sleep past the deadline: one last look right at it.
            await asyncio.sleep(max(0.0, min(delay, deadline - now)))
            try:
                since_submit = self._clock() - started
                result = await self.poll(
                    operation_id, model, priority=schedule.finish_chance(last_pending, since_submit)
                )
            except (GatewayTimeoutError, GatewayUnavailableError, UpstreamError, RateLimitedError) as exc:
                failures += 1
                last_error = exc
                backoff = self._backoff(failures, exc.retry_after if isinstance(exc, RateLimitedError) else None)
                log.info("poll of %s failed (%s); retrying in %.1fs", operation_id, type(exc).__name__, backoff)
                continue
            failures, backoff, last_error = 0, 0.0, None
            answered = self._clock() - started
            if on_poll is not None:
                await on_poll(answered)
            if result.state == "done":
                return replace(result, finished_after=(last_pending + answered) / 2)
            last_pending = answered
            if result.state == "failed":
                self._raise_failure(result.message or "failed", f"operation {operation_id} ({model})")

    # --- downloads ---------------------------------------------------------------------------------------

    def _check_url(self, url: str) -> URL:
        try:
            parsed = URL(url)
        except (ValueError, TypeError) as exc:
            raise _final(DownloadError("result URL is invalid", status=None)) from exc
        if parsed.scheme == "https" and parsed.host:
            return parsed
        if parsed.scheme == "http" and parsed.host and self.allow_loopback_http and _is_loopback_host(parsed.host):
            return parsed
        raise _final(DownloadError(f"refusing to download from a {parsed.scheme or 'schemeless'} URL", status=None))

    async def download(self, url: str) -> ImageData:
        """Fetch one result image: https only, size-capped, streamed within the image memory budget (into a
        temporary file beyond it), refused as soon as its first bytes are not an image's, checked off the loop.

        No Authorization header goes to result hosts (CDNs are third parties). Redirects are followed by
        hand so that each hop passes the same URL check; every connection's address is checked by the
        download session (global unicast only).
        """
        target = self._check_url(url)
        for attempt in range(1, _DOWNLOAD_ATTEMPTS + 1):
            try:
                body = await self._fetch(target)
                break
            except DownloadError as exc:
                transient = exc.status is None or exc.status >= 500 or exc.status == 429
                if not transient or attempt == _DOWNLOAD_ATTEMPTS or getattr(exc, "final", False):
                    raise
                await asyncio.sleep(self._backoff(attempt, None))
        return await inspect_body_async(body)  # gives the body back if it is refused

    async def _fetch(self, target: URL) -> SpooledBody:
        limit = self.download_max_bytes
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                # One stream slot of the memory budget per download in flight: its buffers are bounded by
                # the slot, so downloads beyond the slots wait instead of each holding its own buffers.
                async with (
                    memory_budget().stream(),
                    self._downloads.get(
                        target, timeout=self._timeout(), allow_redirects=False, headers={"Accept": "image/*"}
                    ) as resp,
                ):
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        target = self._check_url(str(target.join(URL(resp.headers["Location"]))))
                        continue
                    if resp.status != 200:
                        raise DownloadError(f"result download: HTTP {resp.status}", status=resp.status)
                    if resp.content_length is not None and resp.content_length > limit:
                        raise _final(DownloadError(f"result of {resp.content_length} bytes is too large", status=200))
                    return await self._stream_body(resp, limit)
            except TimeoutError as exc:
                raise DownloadError("result download timed out", status=None) from exc
            except aiohttp.ClientError as exc:
                refused = refusal_of(exc)
                if refused is not None:
                    # Only the host: a result URL's query may carry a CDN signature.
                    log.warning("refused to download a result from %s: %s", target.host, refused)
                    raise _final(DownloadError(f"result host refused: {refused}", status=None)) from exc
                raise DownloadError(f"result download failed: {type(exc).__name__}", status=None) from exc
        raise _final(DownloadError("too many redirects", status=None))

    @staticmethod
    async def _stream_body(resp: aiohttp.ClientResponse, limit: int) -> SpooledBody:
        """The body into a `SpoolingBuffer`, capped at `limit` bytes and refused as soon as its magic bytes
        are not an image's; on any failure (or cancellation) what it held is given back."""
        buffer = SpoolingBuffer(memory_budget())
        try:
            async for chunk in resp.content.iter_chunked(_CHUNK):
                if buffer.size + len(chunk) > limit:
                    raise _final(DownloadError(f"result larger than {limit} bytes", status=200))
                await buffer.write(chunk)
                if len(buffer.head) >= HEAD_BYTES and sniff_format(buffer.head) is None:
                    break
            if sniff_format(buffer.head) is None:
                raise MalformedResponseError("downloaded result is not a PNG, JPEG or WebP image", status=200)
            return await buffer.finish()
        except BaseException:
            buffer.discard()
            raise

    async def download_all(self, urls: list[str]) -> list[ImageData]:
        """Download every URL concurrently, in order; the first failure cancels the rest and is raised."""
        tasks = [asyncio.ensure_future(self.download(u)) for u in urls]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)
            raise


def _final(exc: DownloadError) -> DownloadError:
    """Mark a download error as not worth retrying (too large, too many redirects)."""
    exc.final = True  # type: ignore[attr-defined]
    return exc
