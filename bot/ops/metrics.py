"""Prometheus metrics of one bot process, in its own registry (tests may build several).

Labels are models, statuses and error kinds only: never a prompt, a member, a token or a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_POLLS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55)


class Metrics:
    """Every metric the bot exposes at /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Counter("imagine_jobs", "Jobs settled, by model and final status", ["model", "status"], registry=r)
        self.generation_seconds = Histogram(
            "imagine_generation_seconds",
            "From leaving the queue to settlement, of delivered jobs",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.detection_lag_seconds = Histogram(
            "imagine_detection_lag_seconds",
            "How long after the gateway finished an async job the bot saw it",
            ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.polls_per_job = Histogram(
            "imagine_polls_per_job", "Answered polls of each settled async job", ["model"], buckets=_POLLS, registry=r
        )
        self.gateway_requests = Counter(
            "imagine_gateway_requests",
            "Image gateway HTTP exchanges, by status ('error': no answer)",
            ["status"],
            registry=r,
        )
        self.credits_held = Counter("imagine_credits_held", "Credits held for new jobs", registry=r)
        self.credits_captured = Counter("imagine_credits_captured", "Credits captured for delivered images", registry=r)
        self.discord_rate_limited = Counter(
            "imagine_discord_rate_limited", "Discord REST answers with status 429", registry=r
        )
        self.event_loop_lag_seconds = Histogram(
            "imagine_event_loop_lag_seconds",
            "How late a timer on the event loop fired",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.paused = Gauge("imagine_generation_paused", "1 while the operator's kill switch is on", registry=r)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    async def watch_event_loop(self, interval: float = 0.5) -> None:
        """Measure how late a sleep wakes up, forever (run as a task; cancel to stop)."""
        while True:
            started = time.monotonic()
            await asyncio.sleep(interval)
            self.event_loop_lag_seconds.observe(max(0.0, time.monotonic() - started - interval))


# discord.py reports a REST 429 only in its logs: the bot's requests in discord.http, interaction
# webhooks (replies, edits, follow-ups) in discord.webhook.async_.
RATE_LIMIT_LOGGERS = ("discord.http", "discord.webhook.async_")
_RATE_LIMIT_MARKERS = ("responded with 429", "is rate limited")


class DiscordRateLimitCounter(logging.Handler):
    """Counts discord.py's log records of a REST 429 (attach it to the RATE_LIMIT_LOGGERS)."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(level=logging.DEBUG)
        self._metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            if any(marker in record.getMessage() for marker in _RATE_LIMIT_MARKERS):
                self._metrics.discord_rate_limited.inc()
