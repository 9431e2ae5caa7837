"""A fake image gateway on 127.0.0.1 that speaks the whole contract of shared/docs/image-api.md.

    async with FakeGateway() as gw:
        client = GatewayClient(session, gw.base_url, SecretStr(gw.api_key), allow_loopback_http=True)

Normal behaviour follows the catalog (bot/data/models.json): Google/OpenAI models answer synchronously with
base64 PNG data URLs, the others answer with an operation id and complete after `completion_delay`; their
result files are served by the fake itself under /files/. Requests are validated like the real gateway
(unknown params -> 422, too many images -> 422, bad key -> 401).

Scripting, two ways:

* `gw.configure(model, **fields)` / `gw.configure_all(**fields)` change a model's `ModelBehaviour`
  (answer shape, payload, image size, delays, final status, result file problems).
* `gw.enqueue(Reply..., method=..., model=..., times=...)` answers the next matching request(s) with a
  canned reply (any status, body, Retry-After, a delay, non-JSON) instead of the normal handling.

Every request is recorded (`gw.requests`); `await gw.wait_for_request(pred)` waits for one without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import itertools
import json
import random
import socket
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from aiohttp import web
from PIL import Image

from bot.generation.catalog import Catalog, ModelSpec

API_PREFIX = "/v1/gateway"
SYNC_PROVIDERS = ("Google", "OpenAI")

# --- images ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def make_png(width: int = 64, height: int = 64, *, noise: bool = False, seed: int = 0, alpha: bool = False) -> bytes:
    """A valid PNG of the given size: a flat colour, or incompressible noise (cached: noise is slow)."""
    mode = "RGBA" if alpha else "RGB"
    if noise:
        raw = random.Random(seed).randbytes(width * height * len(mode))
        img = Image.frombytes(mode, (width, height), raw)
    else:
        img = Image.new(mode, (width, height), (40, 120, 200, 255)[: len(mode)])
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1 if noise else 6)
    return out.getvalue()


def make_bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header announces `width`×`height` pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --- scripting ------------------------------------------------------------------------------------------


@dataclass
class Reply:
    """A canned answer. `passthrough=True` only delays, then handles the request normally."""

    status: int = 200
    json_body: Any = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    passthrough: bool = False
    gate: asyncio.Event | None = None  # hold the answer until this event is set (or the fake closes)

    @classmethod
    def error(cls, status: int, message: str = "error", code: int | str | None = None) -> Reply:
        """The gateway's usual error shape: {"detail": {"code": ..., "message": ...}}."""
        return cls(status, {"detail": {"code": code if code is not None else status, "message": message}})

    @classmethod
    def content_policy(cls, message: str = "Your request was rejected by the safety system") -> Reply:
        return cls(400, {"detail": {"code": "content_policy_violation", "message": message}})

    @classmethod
    def validation(cls, loc: list[str | int], msg: str, type_: str = "value_error") -> Reply:
        """A FastAPI 422: {"detail": [{"loc", "msg", "type"}]}."""
        return cls(422, {"detail": [{"loc": loc, "msg": msg, "type": type_}]})

    @classmethod
    def rate_limited(cls, retry_after: float | str = 1) -> Reply:
        return cls(
            429, {"detail": {"code": 429, "message": "rate limit exceeded"}}, headers={"Retry-After": str(retry_after)}
        )

    @classmethod
    def malformed_json(cls) -> Reply:
        return cls(200, text='{"data": [ {"url": "data:image/png;base64,', headers={"Content-Type": "application/json"})

    @classmethod
    def json(cls, body: Any, status: int = 200) -> Reply:
        """Any JSON (e.g. missing fields: `Reply.json({"id": "x"})`)."""
        return cls(status, body)

    @classmethod
    def plain(cls, status: int, text: str) -> Reply:
        return cls(status, text=text)

    @classmethod
    def slow(cls, delay: float) -> Reply:
        """Wait `delay` seconds, then answer normally."""
        return cls(delay=delay, passthrough=True)

    @classmethod
    def held(cls, gate: asyncio.Event) -> Reply:
        """Answer normally once `gate` is set."""
        return cls(gate=gate, passthrough=True)


Payload = Literal["png", "bad_base64", "not_image", "bomb"]


@dataclass
class ModelBehaviour:
    """How the fake treats one model's requests. Change with `FakeGateway.configure`."""

    mode: Literal["sync", "async"]
    sync_delay: float = 0.0  # seconds before a sync answer
    b64_json: bool = False  # sync: answer {"b64_json": ...} instead of {"url": "data:..."}
    payload: Payload = "png"  # what the images are (sync answers and result files)
    image_size: tuple[int, int] = (64, 64)
    noise: bool = False
    completion_delay: float = 0.2  # async: seconds from submit to completion
    pending_status: str = "processing"  # async: status while not complete
    final_status: str = "completed"  # "completed", "succeeded", "COMPLETED", "failed", "canceled", anything
    failure_message: str | None = "generation failed upstream"  # sent with failure-like final statuses
    done_without_data: bool = False  # a "completed" answer with an empty data list
    result_missing: bool = False  # result file 404s
    result_bytes: bytes | None = None  # serve these bytes as the result file (oversized, not an image)
    result_url_base: str | None = None  # result URLs on another host (e.g. "http://example.com/files")
    inline_result: bool = False  # completed poll answer carries data: URLs instead of file URLs


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    at: float  # time.monotonic()

    @property
    def kind(self) -> Literal["POST", "POLL", "FILE", "OTHER"]:
        if self.method == "POST" and self.path.endswith("/images/generate/"):
            return "POST"
        if self.method == "GET" and self.path.startswith(API_PREFIX + "/images/generate/"):
            return "POLL"
        if self.path.startswith("/files/"):
            return "FILE"
        return "OTHER"


@dataclass
class Operation:
    """An async generation inside the fake."""

    id: str
    model: str
    count: int
    created: float  # monotonic
    ready_at: float  # monotonic moment it became (or becomes) complete
    behaviour: ModelBehaviour
    polls: int = 0
    first_seen_done_at: float | None = None  # when a poll first answered it as complete
    prompt: str = ""  # what the POST asked for (benches match operations to jobs by it)


@dataclass
class _Script:
    reply: Reply
    method: str | None
    model: str | None
    path_contains: str | None
    remaining: int | None  # None: forever


class FakeGateway:
    """The fake gateway server. Use as `async with FakeGateway() as gw:`."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        port: int = 0,
        catalog: Catalog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_key = api_key
        self.catalog = catalog or Catalog.load()
        self.behaviour: dict[str, ModelBehaviour] = {
            m.name: ModelBehaviour(mode="sync" if m.provider in SYNC_PROVIDERS else "async")
            for m in self.catalog.models
        }
        self.requests: list[RecordedRequest] = []
        self.operations: dict[str, Operation] = {}
        self.files: dict[str, bytes] = {}
        self._file_holds: dict[str, tuple[int, asyncio.Event]] = {}
        self._scripts: list[_Script] = []
        self._waiters: list[tuple[Callable[[RecordedRequest], bool], asyncio.Future[RecordedRequest]]] = []
        self._ids = itertools.count(1)
        self._clock = clock
        self._port = port
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self.port = 0

    # --- lifetime ----------------------------------------------------------------------------------------

    async def start(self) -> FakeGateway:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for _, fut in self._waiters:
            if not fut.done():
                fut.cancel()

    async def __aenter__(self) -> FakeGateway:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}{API_PREFIX}"

    @staticmethod
    def free_port() -> int:
        """A port nothing listens on right now (for connection-refused tests)."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    # --- scripting ---------------------------------------------------------------------------------------

    def configure(self, model: str, **fields: Any) -> ModelBehaviour:
        """Change one model's behaviour (fields of `ModelBehaviour`)."""
        self.behaviour[model] = replace(self.behaviour[model], **fields)
        return self.behaviour[model]

    def configure_all(self, **fields: Any) -> None:
        for name in self.behaviour:
            self.configure(name, **fields)

    def enqueue(
        self,
        reply: Reply,
        *,
        method: Literal["POST", "GET", "FILE"] | None = None,
        model: str | None = None,
        times: int | None = 1,
        path_contains: str | None = None,
    ) -> None:
        """Answer the next `times` matching requests (None: all of them) with `reply`.

        `method`: "POST" (submits), "GET" (polls), "FILE" (result downloads) or None (any). `model` matches
        the body's model (POST) or the ?model= query (GET).
        """
        self._scripts.append(_Script(reply, method, model, path_contains, times))

    def complete(self, operation_id: str) -> None:
        """Make an operation complete now (its next poll answers with the final status)."""
        op = self.operations[operation_id]
        op.ready_at = min(op.ready_at, self._clock())

    def forget(self, operation_id: str) -> None:
        """Drop an operation, as the real gateway does once it expires: its polls answer 404 from now on."""
        del self.operations[operation_id]

    def clear_scripts(self) -> None:
        self._scripts.clear()

    # --- observation -------------------------------------------------------------------------------------

    @property
    def posts(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.kind == "POST"]

    @property
    def polls(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.kind == "POLL"]

    def polls_of(self, operation_id: str) -> int:
        op = self.operations.get(operation_id)
        return op.polls if op else 0

    async def wait_for_request(
        self,
        pred: Callable[[RecordedRequest], bool] = lambda r: True,
        *,
        timeout: float = 5.0,
        include_past: bool = True,
    ) -> RecordedRequest:
        """The first request matching `pred` (already seen, or the next one), within `timeout` seconds."""
        if include_past:
            for req in self.requests:
                if pred(req):
                    return req
        fut: asyncio.Future[RecordedRequest] = asyncio.get_running_loop().create_future()
        entry = (pred, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _record(self, req: RecordedRequest) -> None:
        self.requests.append(req)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(req):
                fut.set_result(req)

    # --- HTTP --------------------------------------------------------------------------------------------

    async def _hold(self, reply: Reply) -> None:
        if reply.gate is not None:
            waiters = [asyncio.ensure_future(reply.gate.wait()), asyncio.ensure_future(self._closing.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        await self._pause(reply.delay)

    async def _pause(self, seconds: float) -> None:
        # Interruptible, so that closing the fake never waits for a slow answer.
        if seconds > 0:
            try:
                await asyncio.wait_for(self._closing.wait(), seconds)
            except TimeoutError:
                pass

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            json=body,
            at=time.monotonic(),
        )
        self._record(rec)
        kind = rec.kind
        if kind == "FILE":
            scripted = self._take_script(rec, "FILE", None)
            if scripted is not None and not scripted.passthrough:
                return await self._scripted(scripted)
            if scripted is not None:
                await self._hold(scripted)
            return await self._serve_file(request, request.match_info["tail"].removeprefix("files/"))
        if kind not in ("POST", "POLL"):
            return self._error(404, "not found")
        if not self._authorized(request):
            return self._error(401, "authentication_error - invalid api key")
        model = body.get("model") if kind == "POST" and isinstance(body, dict) else rec.query.get("model")
        scripted = self._take_script(rec, "POST" if kind == "POST" else "GET", model)
        if scripted is not None:
            if not scripted.passthrough:
                return await self._scripted(scripted)
            await self._hold(scripted)
        if kind == "POST":
            return await self._generate(body)
        return self._poll(request.path, rec.query)

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        return auth == f"Bearer {self.api_key}" or request.headers.get("x-api-key") == self.api_key

    def _take_script(self, rec: RecordedRequest, method: str, model: str | None) -> Reply | None:
        for script in self._scripts:
            if script.method is not None and script.method != method:
                continue
            if script.model is not None and script.model != model:
                continue
            if script.path_contains is not None and script.path_contains not in rec.path:
                continue
            if script.remaining is not None:
                script.remaining -= 1
                if script.remaining <= 0:
                    self._scripts.remove(script)
            return script.reply
        return None

    async def _scripted(self, reply: Reply) -> web.Response:
        await self._hold(reply)
        if reply.text is not None:
            return web.Response(status=reply.status, text=reply.text, headers=reply.headers)
        return web.json_response(reply.json_body, status=reply.status, headers=reply.headers)

    @staticmethod
    def _error(status: int, message: str, code: int | str | None = None) -> web.Response:
        return web.json_response({"detail": {"code": code or status, "message": message}}, status=status)

    @staticmethod
    def _validation(errors: list[tuple[list[str | int], str, str]]) -> web.Response:
        detail = [{"loc": loc, "msg": msg, "type": type_} for loc, msg, type_ in errors]
        return web.json_response({"detail": detail}, status=422)

    def _validate(self, body: Any) -> tuple[ModelSpec | None, int, web.Response | None]:
        if not isinstance(body, dict):
            return None, 0, self._validation([(["body"], "Input should be a valid dictionary", "dict_type")])
        errors: list[tuple[list[str | int], str, str]] = []
        for name in ("model", "prompt"):
            if not isinstance(body.get(name), str) or not body[name].strip():
                errors.append((["body", name], "Field required", "missing"))
        if errors:
            return None, 0, self._validation(errors)
        if body["model"] not in self.catalog:
            return None, 0, self._error(404, f"model not found: {body['model']}")
        spec = self.catalog.get(body["model"])
        allowed: dict[str, list[str] | None] = {}
        for option, opt_spec in spec.options.items():
            allowed[opt_spec.field] = spec.choices(option, self.catalog.aspect_ratios)
        count = 1
        for key, value in body.items():
            if key in ("model", "prompt"):
                continue
            if key == "number_of_images" and spec.max_images > 1:
                if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= spec.max_images:
                    errors.append(
                        (["body", key], f"Input should be less than or equal to {spec.max_images}", "less_than_equal")
                    )
                else:
                    count = value
            elif key in allowed:
                choices = allowed[key]
                if choices is not None and value not in choices:
                    errors.append((["body", key], f"Input should be one of {choices}", "enum"))
            else:
                errors.append((["body", key], f"Extra inputs are not permitted for {spec.name}", "extra_forbidden"))
        if errors:
            return spec, 0, self._validation(errors)
        return spec, count, None

    def _image_bytes(self, behaviour: ModelBehaviour, index: int) -> bytes:
        if behaviour.payload == "not_image":
            return b"<html>this is not an image</html>"
        if behaviour.payload == "bomb":
            return make_bomb_png(100_000, 100_000)
        width, height = behaviour.image_size
        return make_png(width, height, noise=behaviour.noise, seed=index)

    def _inline_item(self, behaviour: ModelBehaviour, index: int) -> dict[str, str]:
        if behaviour.payload == "bad_base64":
            encoded = "iVBORw0KGgo!!not*base64"
        else:
            encoded = base64.b64encode(self._image_bytes(behaviour, index)).decode("ascii")
        if behaviour.b64_json:
            return {"b64_json": encoded}
        return {"url": "data:image/png;base64," + encoded}

    async def _generate(self, body: Any) -> web.Response:
        spec, count, problem = self._validate(body)
        if problem is not None:
            return problem
        assert spec is not None
        behaviour = self.behaviour[spec.name]
        if behaviour.mode == "sync":
            await self._pause(behaviour.sync_delay)
            n = next(self._ids)
            return web.json_response(
                {
                    "id": f"img-{n:016x}",
                    "created": int(time.time()),
                    "model": spec.name,
                    "data": [self._inline_item(behaviour, i) for i in range(count)],
                    "usage": {"prompt_tokens": 42, "completion_tokens": 1290, "total_tokens": 1332},
                }
            )
        prefix = "fal" if "Fal" in spec.provider else "rep"
        op_id = f"{prefix}-{next(self._ids):012x}"
        now = self._clock()
        self.operations[op_id] = Operation(
            id=op_id,
            model=spec.name,
            count=count,
            created=now,
            ready_at=now + behaviour.completion_delay,
            behaviour=behaviour,
            prompt=str(body.get("prompt", "")),
        )
        return web.json_response({"operation_id": op_id, "status": behaviour.pending_status})

    def _poll(self, path: str, query: dict[str, str]) -> web.Response:
        op_id = path.removeprefix(API_PREFIX + "/images/generate/").rstrip("/")
        if "model" not in query:
            return self._validation([(["query", "model"], "Field required", "missing")])
        op = self.operations.get(op_id)
        if op is None or op.model != query["model"]:
            return self._error(404, f"operation not found: {op_id}")
        op.polls += 1
        now = self._clock()
        behaviour = op.behaviour
        if now < op.ready_at:
            return web.json_response({"operation_id": op_id, "status": behaviour.pending_status})
        if op.first_seen_done_at is None:
            op.first_seen_done_at = now
        status = behaviour.final_status
        if status.lower() in ("completed", "succeeded"):
            if behaviour.done_without_data:
                data: list[dict[str, str]] = []
            elif behaviour.inline_result:
                data = [self._inline_item(behaviour, i) for i in range(op.count)]
            else:
                data = []
                for i in range(op.count):
                    name = f"{op_id}-{i}.png"
                    self.files[name] = behaviour.result_bytes or self._image_bytes(behaviour, i)
                    base = behaviour.result_url_base or f"{self.root_url}/files"
                    data.append({"url": f"{base}/{name}"})
            return web.json_response({"operation_id": op_id, "status": status, "data": data})
        if status.lower() in ("failed", "error", "aborted"):
            return web.json_response({"operation_id": op_id, "status": status, "error": behaviour.failure_message})
        return web.json_response({"operation_id": op_id, "status": status})

    def hold_file(self, name: str, after_bytes: int, gate: asyncio.Event) -> None:
        """Serve file `name` in two parts: its first `after_bytes`, then the rest once `gate` is set (a slow
        CDN mid-body; closing the fake ends the body there)."""
        self._file_holds[name] = (after_bytes, gate)

    async def _serve_file(self, request: web.Request, name: str) -> web.StreamResponse:
        op_id = name.rsplit("-", 1)[0]
        op = self.operations.get(op_id)
        if name not in self.files or (op is not None and op.behaviour.result_missing):
            return web.Response(status=404, text="Not Found")
        body = self.files[name]
        if name not in self._file_holds:
            return web.Response(body=body, content_type="image/png")
        after, gate = self._file_holds[name]
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[:after])
        await self._hold(Reply.held(gate))
        if not self._closing.is_set():
            await resp.write(body[after:])
            await resp.write_eof()
        return resp
