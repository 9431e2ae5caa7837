"""Secrets are scrubbed from log text by shape and by value, and ordinary text is left alone."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bot.logs import configure_logging
from bot.redaction import REDACTED, Redactor

TOKEN = "aW50ZXJhY3Rpb246MTQ0NDI1NjQ2NjQ2NzA5MzQ1OTpGdUdpNzVzZ0lxb2x4VVpkVHlSb0hEbUJkZ0N6dkpadVlBdUVtNmxaNQ"
BOT_TOKEN = "MTE4NDk1MzU4NjgyMzIzMzU2OA.GbXqzT.Vb0T2mJx9kP8rT6nW1yQ4sL7cF3hD5gA2eZ0uIo"


@pytest.mark.parametrize(
    "text",
    [
        f"PATCH https://discord.com/api/v10/webhooks/123456/{TOKEN}/messages/@original has returned 200",
        f"POST https://discord.com/api/v10/interactions/987654/{TOKEN}/callback",
        f"WebSocket Event: {{'t': 'INTERACTION_CREATE', 'd': {{'token': '{TOKEN}', 'id': '1'}}}}",
        f"executing functools.partial(<built-in method execute>, 'INSERT INTO jobs VALUES (?, ?)', (1, '{TOKEN}'))",
        f"starting with {BOT_TOKEN}",
        "headers={'Authorization': 'Bot some.opaque-bot-token'}",
        "x" * 40 + "A" * 120,
    ],
)
def test_token_shapes_are_redacted(text: str) -> None:
    out = Redactor()(text)
    assert REDACTED in out
    for secret in (TOKEN, BOT_TOKEN, "some.opaque-bot-token", "A" * 120):
        assert secret not in out


def test_a_webhook_token_of_any_shape_is_redacted_in_urls() -> None:
    out = Redactor()("GET /webhooks/42/short-odd_token/messages/7")
    assert out == f"GET /webhooks/42/{REDACTED}/messages/7"


def test_configured_secrets_are_redacted_literally() -> None:
    assert Redactor(["sk-live-123456"])("key sk-live-123456 used") == f"key {REDACTED} used"


@pytest.mark.parametrize(
    "text",
    [
        "the bot connected to 3 servers; Bearer of bad news",
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "GET /v1/gateway/images/generate/op-12/ model=xai/grok-imagine-image",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert Redactor(["short"])(text) == text


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_configured_logging_redacts_messages_extras_and_exceptions(fmt: str, restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("DEBUG", fmt, secrets=["gateway-api-key-1"], stream=out)
    log = logging.getLogger("some.library")
    log.debug("url %s", f"/webhooks/1/{TOKEN}")
    log.info("extra", extra={"token": TOKEN})
    try:
        raise RuntimeError(f"failed with gateway-api-key-1 and {TOKEN}")
    except RuntimeError:
        log.exception("boom")
    text = out.getvalue()
    assert text.count(REDACTED) >= 4
    assert TOKEN not in text and "gateway-api-key-1" not in text
    if fmt == "json":
        assert all(json.loads(line) for line in text.splitlines() if line.startswith("{"))
