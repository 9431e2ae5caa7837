"""Every setting the bot reads, from the environment and `.env`.

The settings object is built once in `bot.__main__` and passed down; nothing builds it at import time.
Secrets are `SecretStr` so that they never show up in a repr, a log line or an exception.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Period = Literal["day", "week", "month", "unlimited"]

DEFAULT_GATEWAY_BASE_URL = "https://factchat-cloud.mindlogic.ai/v1/gateway"


class Settings(BaseSettings):
    """The bot's configuration. Field names map to upper-case environment variables."""

    # An empty value (as in .env.example) means "not set": use the default.
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    # Secrets and endpoints
    discord_token: SecretStr
    gateway_api_key: SecretStr
    gateway_base_url: str = DEFAULT_GATEWAY_BASE_URL
    database_url: str = "sqlite:///data/imagine-bot.db"

    # Discord
    dev_guild_id: int | None = None
    sync_commands: Literal["auto", "always", "never"] = "auto"
    guild_ready_timeout: float = Field(default=2.0, ge=0, le=60)
    # Sharding (README "Sharding"): both empty = one unsharded client; SHARD_IDS empty = all SHARD_COUNT shards.
    shard_count: int | None = Field(default=None, ge=1)
    shard_ids: str = ""  # comma-separated shard ids this process runs, e.g. 0,1

    # Catalog and defaults
    model_catalog_path: Path | None = None
    default_model: str = "gemini-2.5-flash-image"
    max_prompt_length: int = Field(default=1500, ge=1, le=6000)
    default_allowance: int = Field(default=500, ge=0)
    default_allowance_period: Period = "month"
    quote_threshold: int = Field(default=100, ge=0)

    # Gateway client
    gateway_request_timeout: float = Field(default=120.0, gt=0)
    poll_deadline_seconds: float = Field(default=600.0, gt=0)
    poll_default_expected_seconds: float = Field(default=20.0, gt=0)
    poll_min_interval: float = Field(default=0.25, gt=0)
    poll_max_interval: float = Field(default=10.0, gt=0)
    poll_history_size: int = Field(default=20, ge=1)
    poll_first_poll_spreads: float = Field(default=1.5, ge=0, le=5)
    poll_density: float = Field(default=0.2, gt=0, le=5)
    poll_budget: float = Field(default=1.8, ge=0, le=20)  # × the gateway page's example loop; 0: no cap
    gateway_max_requests_per_second: float | None = Field(default=None, gt=0)  # POSTs + polls; None: no cap
    download_max_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    # Finished images held in memory at once, in bytes; the rest wait in temporary files (0: all on disk).
    image_memory_budget_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    allow_loopback_http: bool = False

    # Jobs
    progress_edit_interval: float = Field(default=2.0, ge=0)
    # Progress edits per second over all jobs together (result edits are not counted); 0: no cap.
    progress_edits_per_second: float = Field(default=40.0, ge=0)
    max_jobs_per_member: int = Field(default=2, ge=1)
    max_jobs_per_guild: int = Field(default=8, ge=1)
    max_jobs_global: int = Field(default=16, ge=1)
    shutdown_grace_seconds: float = Field(default=8.0, ge=0, le=8)  # SIGTERM must exit within 10 s
    max_queued_per_member: int = Field(default=10, ge=1)  # a member's jobs queued or running
    max_queued_per_guild: int = Field(default=200, ge=1)  # a server's jobs queued or running
    # Discord's answers about a member's roles, for jobs resumed after a restart (submitted jobs keep theirs).
    member_roles_cache_seconds: float = Field(default=60.0, ge=0)
    # Several processes on one database (README "Several processes on PostgreSQL"): a claimed job is the
    # claiming process's until its lease expires; it renews its leases and heartbeat every HEARTBEAT_SECONDS,
    # and a process silent for 3 heartbeats is dead: its expired jobs are taken over.
    job_lease_seconds: float = Field(default=30.0, gt=0)
    heartbeat_seconds: float = Field(default=5.0, gt=0)

    # Moderation
    blocklist_max_terms: int = Field(default=500, ge=1, le=5000)

    # Operations
    gc_freeze_after_start: bool = True  # keep start-up objects out of garbage-collector scans (gc.freeze)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"

    # The operator's seat (bot/ops, cogs/operator.py)
    owner_ids: str = ""  # comma-separated user ids, operators besides the application's owner or team
    operator_daily_cap: int | None = Field(default=None, ge=0)  # credits per UTC day across every server
    operator_monthly_cap: int | None = Field(default=None, ge=0)  # credits per UTC month across every server
    operator_guild_cap: int | None = Field(default=None, ge=0)  # each server's cap unless the operator set one
    operator_guild_cap_period: Literal["day", "week", "month"] = "month"
    guild_access: Literal["open", "allowlist"] = "open"
    operator_alert_channel_id: int | None = None
    operator_alert_webhook_url: SecretStr | None = None  # a webhook URL is a secret: it lets anyone post
    operator_alert_failure_rate: float = Field(default=0.5, gt=0, le=1)  # a model's failure share that alerts
    operator_alert_failure_window: int = Field(default=20, ge=2)  # its latest jobs that share is taken over
    health_host: str = "127.0.0.1"
    health_port: int | None = Field(default=None, ge=0, le=65535)  # empty: no health/metrics server

    @field_validator("owner_ids")
    @classmethod
    def _user_ids(cls, value: str) -> str:
        for part in value.replace(" ", "").split(","):
            if part and not part.isdigit():
                raise ValueError("must be comma-separated user ids, e.g. 123,456")
        return value

    @field_validator("shard_ids")
    @classmethod
    def _shards_in_count(cls, value: str, info: ValidationInfo) -> str:
        parts = [part for part in value.replace(" ", "").split(",") if part]
        if not parts:
            return ""
        if not all(part.isdigit() for part in parts):
            raise ValueError("must be comma-separated shard numbers, e.g. 0,1")
        if "shard_count" not in info.data:
            return value  # SHARD_COUNT itself is invalid, and says so
        count = info.data["shard_count"]
        if count is None:
            raise ValueError("needs SHARD_COUNT (the total number of shards of the bot)")
        outside = sorted({int(part) for part in parts if int(part) >= count})
        if outside:
            listed = ", ".join(map(str, outside))
            raise ValueError(f"shard {listed} is outside SHARD_COUNT={count} (shards are 0 to {count - 1})")
        if len(set(parts)) != len(parts):
            raise ValueError("lists a shard twice")
        return ",".join(str(int(part)) for part in parts)

    @property
    def shards(self) -> tuple[int, ...] | None:
        """The shards this process runs (SHARD_IDS, or all of SHARD_COUNT); None when unsharded."""
        if self.shard_count is None:
            return None
        if self.shard_ids:
            return tuple(int(part) for part in self.shard_ids.split(","))
        return tuple(range(self.shard_count))

    @property
    def operator_ids(self) -> frozenset[int]:
        """OWNER_IDS as a set of user ids."""
        return frozenset(int(part) for part in self.owner_ids.replace(" ", "").split(",") if part)

    @field_validator("gateway_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "sqlite+memory:", "postgresql://", "postgres://")):
            raise ValueError("must be sqlite:///<path> or postgresql://<user>@<host>/<database>")
        return value

    @field_validator("discord_token", "gateway_api_key")
    @classmethod
    def _not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value
