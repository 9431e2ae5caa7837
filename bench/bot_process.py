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
        self.profile: DispatchProfile | None = None
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
            figures = {"worst_stall": self.worst, "samples": self.samples, "worst_gc": self.worst_gc}
            if self.profile is not None:
                figures["dispatch"] = self.profile.snapshot()
            json.dump(figures, out)
        os.replace(path + ".tmp", path)
        self.worst = self.worst_gc = 0.0
        self.samples = 0


class DispatchProfile:
    """Where the dispatcher's time goes (BENCH_PROFILE_DISPATCH=1): wall time inside `JobService._dispatch`
    and, within it, in the store reads and claims and the scheduling functions. Bench-only: it wraps the
    methods from outside, nothing in bot/ knows about it."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.dispatcher: asyncio.Task[object] | None = None

    def install(self) -> None:
        import bot.jobs.service
        from bot.store.sqlite import SqliteStore

        def timed_async(owner: object, name: str, label: str, only_inside: bool) -> None:
            original = getattr(owner, name)

            async def wrapper(*args: object, **kwargs: object) -> object:
                task = asyncio.current_task()
                if only_inside and task is not self.dispatcher:
                    return await original(*args, **kwargs)  # a job's own call, not the dispatcher's
                if not only_inside:
                    self.dispatcher = task
                started = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    self._add(label, time.perf_counter() - started)

            setattr(owner, name, wrapper)

        def timed_sync(module: object, name: str) -> None:
            original = getattr(module, name)

            def wrapper(*args: object, **kwargs: object) -> object:
                started = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self._add(name, time.perf_counter() - started)

            setattr(module, name, wrapper)

        timed_async(bot.jobs.service.JobService, "_dispatch", "dispatch (all)", only_inside=False)
        timed_async(SqliteStore, "active_jobs", "store.active_jobs", only_inside=True)
        timed_async(SqliteStore, "update_job", "store.update_job (claims)", only_inside=True)
        if hasattr(SqliteStore, "claim_jobs"):
            timed_async(SqliteStore, "claim_jobs", "store.claim_jobs", only_inside=True)
        # Present in one version or the other (the bench also profiles older code for "before" figures).
        for name in ("pick_jobs_to_start", "queue_positions"):
            if hasattr(bot.jobs.service, name):
                timed_sync(bot.jobs.service, name)

    def _add(self, label: str, seconds: float) -> None:
        self.totals[label] = self.totals.get(label, 0.0) + seconds
        self.counts[label] = self.counts.get(label, 0) + 1

    def snapshot(self) -> dict[str, list[float]]:
        figures = {k: [self.totals[k], self.counts[k]] for k in self.totals}
        self.totals.clear()
        self.counts.clear()
        return figures


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
    # Experiments only (what a change outside the bot's job code would buy; every figure in bench/README.md
    # says when one was set): the collector's thresholds, and a cap on discord.py's connections (it opens
    # one per concurrent request, limit=0).
    if os.environ.get("BENCH_GC_THRESHOLD"):
        gc.set_threshold(*(int(x) for x in os.environ["BENCH_GC_THRESHOLD"].split(",")))
    if os.environ.get("BENCH_DISCORD_CONNECTIONS"):
        import aiohttp

        original_login = discord.http.HTTPClient.static_login
        limit = int(os.environ["BENCH_DISCORD_CONNECTIONS"])

        async def static_login(self: discord.http.HTTPClient, token: str) -> object:
            if self.connector is discord.utils.MISSING:
                self.connector = aiohttp.TCPConnector(limit=limit)
            return await original_login(self, token)

        discord.http.HTTPClient.static_login = static_login  # type: ignore[method-assign]
    import faulthandler

    faulthandler.register(signal.SIGUSR2, all_threads=True)  # `kill -USR2 PID`: every thread's stack to the log
    profile = DispatchProfile()
    if os.environ.get("BENCH_PROFILE_DISPATCH"):
        profile.install()
    probe = LoopLagProbe()
    probe.profile = profile
    probe_task = asyncio.create_task(probe.run(), name="loop-lag-probe")
    stats_file = os.environ["BENCH_STATS_FILE"]
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, probe.dump, stats_file)

    def dump_tasks() -> None:
        """`kill -URG PID`: every task's stack to STATS_FILE.tasks (where a hung burst waits)."""
        import collections
        import io

        where: collections.Counter[str] = collections.Counter()
        for task in asyncio.all_tasks():
            out = io.StringIO()
            task.print_stack(limit=12, file=out)
            where[out.getvalue().split("\n", 1)[1]] += 1
        with open(stats_file + ".tasks", "w") as file:
            for stack, count in where.most_common():
                file.write(f"--- {count} task(s)\n{stack}\n")

    asyncio.get_running_loop().add_signal_handler(signal.SIGURG, dump_tasks)
    profiler = None
    if os.environ.get("BENCH_CPROFILE"):
        # Where the bot's CPU goes (the event loop's thread only), written at exit: `python -m pstats FILE`.
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        await run(settings)
    finally:
        probe_task.cancel()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(os.environ["BENCH_CPROFILE"])


if __name__ == "__main__":
    asyncio.run(main())
