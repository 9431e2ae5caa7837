"""Settings: one clear line names a missing or malformed setting, and secrets never show."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.__main__ import freeze_startup_heap
from bot.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def run_bot(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "GATEWAY_", "DATABASE_"))}
    clean["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "bot"], env=clean | env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def test_missing_settings_stop_start_up_with_one_line(tmp_path: Path) -> None:
    result = run_bot({}, tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "DISCORD_TOKEN is missing" in lines[0] and "GATEWAY_API_KEY is missing" in lines[0]


def test_malformed_setting_is_named_without_echoing_secrets(tmp_path: Path) -> None:
    secret = "sk-very-secret-value-123"
    result = run_bot({"DISCORD_TOKEN": secret, "GATEWAY_API_KEY": secret, "MAX_JOBS_PER_MEMBER": "lots"}, tmp_path)
    assert result.returncode != 0
    assert "MAX_JOBS_PER_MEMBER is invalid" in result.stderr
    assert secret not in result.stderr + result.stdout


def test_defaults_and_secret_handling() -> None:
    settings = Settings(_env_file=None, discord_token="tok-abcdefgh", gateway_api_key="key-abcdefgh")
    assert settings.gateway_base_url == "https://factchat-cloud.mindlogic.ai/v1/gateway"
    assert settings.database_url == "sqlite:///data/imagine-bot.db"
    assert "tok-abcdefgh" not in repr(settings) and "key-abcdefgh" not in repr(settings)


def test_unsupported_database_url_is_refused() -> None:
    with pytest.raises(ValidationError, match="database_url"):
        Settings(_env_file=None, discord_token="t" * 10, gateway_api_key="k" * 10, database_url="mysql://x")


def test_the_example_env_file_with_only_the_secrets_filled_is_valid(tmp_path: Path) -> None:
    example = (ROOT / ".env.example").read_text()
    filled = example.replace("DISCORD_TOKEN=\n", "DISCORD_TOKEN=tok-abcdefgh\n").replace(
        "GATEWAY_API_KEY=\n", "GATEWAY_API_KEY=key-abcdefgh\n"
    )
    env_file = tmp_path / ".env"
    env_file.write_text(filled)
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.dev_guild_id is None and settings.model_catalog_path is None
    assert settings.discord_token.get_secret_value() == "tok-abcdefgh"


def test_every_setting_is_in_the_example_env_file() -> None:
    example = (ROOT / ".env.example").read_text()
    names = {line.split("=", 1)[0] for line in example.splitlines() if line and not line.startswith("#")}
    assert {name.upper() for name in Settings.model_fields} <= names


@pytest.mark.parametrize(("value", "ids"), [("123", {123}), ("123, 456", {123, 456}), ("", set())])
def test_owner_ids_take_one_id_or_several(value: str, ids: set[int]) -> None:
    settings = Settings(_env_file=None, discord_token="t" * 10, gateway_api_key="k" * 10, owner_ids=value)
    assert settings.operator_ids == ids


def test_owner_ids_that_are_not_ids_are_refused() -> None:
    with pytest.raises(ValidationError, match="owner_ids"):
        Settings(_env_file=None, discord_token="t" * 10, gateway_api_key="k" * 10, owner_ids="123,bob")
async def test_freeze_startup_heap_waits_for_ready_then_freezes() -> None:
    ready = asyncio.Event()

    async def wait_ready() -> bool:
        return await ready.wait()

    gc.unfreeze()
    task = asyncio.create_task(freeze_startup_heap(wait_ready))
    await asyncio.sleep(0)
    try:
        assert gc.get_freeze_count() == 0, "nothing frozen before the bot is ready"
        ready.set()
        await asyncio.wait_for(task, 10)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
