"""The real bot, started by `bench/bench_scale.py` in its own process, with a loop-lag probe.

    BENCH_DISCORD_API=... BENCH_DISCORD_GATEWAY=... BENCH_STATS_FILE=... python -m bench.bot_process

Settings come from the environment as in production (`bot.__main__.load_settings`). The only differences
from `python -m bot`: discord.py is pointed at the fake Discord (as `FakeDiscord.patch_discord` does in the
e2e tests), and a probe measures how late the event loop wakes a 10 ms timer. On SIGUSR1 the process writes
the worst lateness since the previous SIGUSR1 (and the longest garbage-collector pause) to BENCH_STATS_FILE
(JSON) and starts a new window.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import time

import discord.gateway
import discord.http
import yarl

from bot.__main__ import load_settings, run
from bot.logs import configure_logging

PROBE_INTERVAL = 0.01


class LoopLagProbe:
    """How late the event loop runs a timer: the worst stall any other callback could have seen."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.samples = 0
        # The garbage collector stops the loop too; its own pauses tell a GC stall from a busy loop.
        self.worst_gc = 0.0
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.worst_gc = max(self.worst_gc, time.perf_counter() - self._gc_started)

    async def run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(PROBE_INTERVAL)
            late = time.perf_counter() - before - PROBE_INTERVAL
            self.worst = max(self.worst, late)
            self.samples += 1

    def dump(self, path: str) -> None:
        """Write the window's figures to `path` and start a new window."""
        with open(path + ".tmp", "w") as out:
            json.dump({"worst_stall": self.worst, "samples": self.samples, "worst_gc": self.worst_gc}, out)
        os.replace(path + ".tmp", path)
        self.worst = self.worst_gc = 0.0
        self.samples = 0


async def main() -> None:
    discord.http.Route.BASE = os.environ["BENCH_DISCORD_API"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["BENCH_DISCORD_GATEWAY"])
    settings = load_settings()
    configure_logging(
        settings.log_level,
        settings.log_format,
        secrets=(settings.discord_token.get_secret_value(), settings.gateway_api_key.get_secret_value()),
    )
    if os.environ.get("BENCH_SLOW_CALLBACK_MS"):
        # asyncio's debug mode logs every callback that holds the loop longer than this (and what it was).
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = float(os.environ["BENCH_SLOW_CALLBACK_MS"]) / 1000
    probe = LoopLagProbe()
    probe_task = asyncio.create_task(probe.run(), name="loop-lag-probe")
    stats_file = os.environ["BENCH_STATS_FILE"]
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, probe.dump, stats_file)
    try:
        await run(settings)
    finally:
        probe_task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
