"""Bursts of simultaneous /imagine jobs against the real bot process (issue 10).

    .venv/bin/python -m bench.bench_scale [--jobs 200,1000] [--image 1.5MB|small] [--generation 5]
                                          [--model NAME] [--warmup 20] [--timeout 180]

The bot runs as production does (`bench/bot_process.py`: `bot.__main__.run` with settings from the
environment) in its own process, so that its memory and CPU are its own; the fake Discord and the fake
gateway (tests/fakes/) run in this process. Concurrency limits and allowances are raised so that the bot
may run every job of a burst at once; every other setting is the default. Each burst sends N slash commands
from N members at once; every job generates for `--generation` seconds (async models: the operation
completes after that; sync models: the POST answers after that), so the jobs finish together.

Per burst it prints:
- delivered: jobs whose reply got its image;
- wall / gen: from the first command to the last image, divided by the generation time;
- admission: acknowledgement (interaction callback) -> the job's POST at the gateway, p50 and max;
- overhead: the gateway's answer (the poll that said done; for sync models, the POST's answer) -> the
  final edit of the reply carrying the image, p50 / p95 / max;
- peak RSS of the bot process during the burst (VmHWM after a reset through /proc/PID/clear_refs);
- worst loop stall: the longest an event-loop timer in the bot process was late (and the longest pause
  of the garbage collector, which stops the loop too; on a loaded machine a stall may also be the OS not
  running the process);
- polls per job and detection lag (completion -> the poll that saw it, median);
- Discord: 429s the fake answered, and requests over Discord's documented limits (5 per 2 s per
  interaction token; 50 per second over all bot-token routes, which interaction routes are exempt from);
- CPU seconds of the bot and of this process (the fakes and the driver), to tell the test's own share.
- a timeline: when the last acknowledgement, POST, poll that saw a job done and image came, from the first
  command (where a long wall goes).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakes.fake_discord import DEFAULT_TOKEN, FakeDiscord, FakeInteraction, FakeUser
from tests.fakes.fake_gateway import FakeGateway, Operation

ASYNC_MODEL = "black-forest-labs/flux-1.1-pro"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_size(text: str) -> tuple[int, int, bool]:
    """(width, height, noise) of the fake's PNG for an image size like "1.5MB", "300KB" or "small"."""
    if text == "small":
        return 64, 64, False
    units = {"KB": 1024, "MB": 1024 * 1024}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            target = float(text[: -len(unit)]) * factor
            side = int(math.sqrt(target / 3))  # RGB noise does not compress: ~3 bytes per pixel
            return side, side, True
    raise argparse.ArgumentTypeError(f"bad image size {text!r}")


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def over_limit(times: list[float], window: float, allowed: int) -> tuple[int, int]:
    """(requests beyond `allowed` in any sliding `window`, the most seen in one window)."""
    recent: collections.deque[float] = collections.deque()
    excess = most = 0
    for at in sorted(times):
        recent.append(at)
        while recent[0] <= at - window:
            recent.popleft()
        most = max(most, len(recent))
        if len(recent) > allowed:
            excess += 1
    return excess, most


class BotProcess:
    """The bot in a child process, its stats read through /proc and the probe's stats file."""

    def __init__(self, fd: FakeDiscord, gw: FakeGateway, tmp: Path, jobs: int) -> None:
        self.fd, self.gw, self.tmp = fd, gw, tmp
        self.stats_file = tmp / "loop-stats.json"
        self.log_path = tmp / "bot.log"
        self.limit = jobs
        self.proc: asyncio.subprocess.Process | None = None

    def env(self) -> dict[str, str]:
        assert self.fd.guild is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "GATEWAY_"))}
        env.update(
            BENCH_DISCORD_API=self.fd.api_base,
            BENCH_DISCORD_GATEWAY=self.fd.gateway_url,
            BENCH_STATS_FILE=str(self.stats_file),
            DISCORD_TOKEN=DEFAULT_TOKEN,
            GATEWAY_API_KEY=self.gw.api_key,
            GATEWAY_BASE_URL=self.gw.base_url,
            DATABASE_URL=f"sqlite:///{self.tmp / 'bot.db'}",
            ALLOW_LOOPBACK_HTTP="true",
            DEV_GUILD_ID=str(self.fd.guild.id),
            GUILD_READY_TIMEOUT="0.05",
            QUOTE_THRESHOLD="0",
            DEFAULT_ALLOWANCE=str(10**12),
            MAX_JOBS_PER_MEMBER=str(self.limit),
            MAX_JOBS_PER_GUILD=str(self.limit),
            MAX_JOBS_GLOBAL=str(self.limit),
            # The queue's caps too (a server's jobs queued or running): else a burst past 200 is refused.
            MAX_QUEUED_PER_MEMBER=str(self.limit),
            MAX_QUEUED_PER_GUILD=str(self.limit),
        )
        return env

    async def start(self) -> None:
        log = self.log_path.open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.bot_process", env=self.env(), stdout=log, stderr=log, cwd=os.getcwd()
        )
        assert self.fd.guild is not None
        guild_id = self.fd.guild.id
        await self.fd.wait_for(lambda: self.fd.find_command("imagine", guild_id), timeout=60, what="commands synced")
        await self.fd.wait_until_ready(60)

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def reset_peak_rss(self) -> None:
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    async def loop_stats(self) -> dict[str, Any]:
        """The probe's worst stall since the previous call (and start a new window)."""
        before = self.stats_file.stat().st_mtime_ns if self.stats_file.exists() else 0
        self.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.stats_file.exists() and self.stats_file.stat().st_mtime_ns != before:
                with contextlib.suppress(ValueError):
                    return json.loads(self.stats_file.read_text())  # type: ignore[no-any-return]
            await asyncio.sleep(0.05)
        return {"worst_stall": float("nan"), "samples": 0, "worst_gc": float("nan")}


@dataclass
class BurstResult:
    label: str
    n: int
    delivered: int
    failed: int
    wall_ratio: float
    admission: list[float]
    overhead: list[float]
    peak_rss_mb: float
    worst_stall_ms: float
    worst_gc_ms: float
    polls_per_job: float | None
    lag_median: float | None
    lag_p95: float | None
    discord_429: int
    token_excess: int
    token_most: int
    global_excess: int
    global_most: int
    bot_cpu: float
    bench_cpu: float
    wall: float
    timeline: dict[str, float]  # seconds from the first command to the last of each step

    def lines(self) -> list[str]:
        ms = 1000.0
        poll = (
            f"polls/job {self.polls_per_job:.2f}  detection lag median {self.lag_median:.2f}s p95 {self.lag_p95:.2f}s"
            if self.polls_per_job is not None and self.lag_median is not None
            else "polls/job -  (sync model)"
        )
        return [
            f"{self.label}: N={self.n}  delivered {self.delivered}/{self.n}  failed {self.failed}"
            f"  wall {self.wall:.1f}s = {self.wall_ratio:.2f}x the generation",
            f"  admission (ack -> POST)  p50 {quantile(self.admission, 0.5) * ms:.0f} ms"
            f"  max {max(self.admission, default=float('nan')) * ms:.0f} ms",
            f"  overhead (answer -> image edit)  p50 {quantile(self.overhead, 0.5) * ms:.0f} ms"
            f"  p95 {quantile(self.overhead, 0.95) * ms:.0f} ms"
            f"  max {max(self.overhead, default=float('nan')) * ms:.0f} ms",
            f"  bot peak RSS {self.peak_rss_mb:.0f} MB  worst loop stall {self.worst_stall_ms:.0f} ms"
            f" (longest GC pause {self.worst_gc_ms:.0f} ms)  {poll}",
            f"  Discord 429s {self.discord_429}  over limits: per token {self.token_excess} (most {self.token_most}"
            f" per 2 s)  global bot-token {self.global_excess} (most {self.global_most} per s)",
            f"  CPU: bot {self.bot_cpu:.1f}s ({self.bot_cpu / self.wall:.0%} of a core),"
            f" fakes+driver {self.bench_cpu:.1f}s ({self.bench_cpu / self.wall:.0%})",
            "  timeline (s after the first command, last of each): "
            + "  ".join(f"{step} {at:.2f}" for step, at in self.timeline.items()),
        ]


async def run_burst(
    label: str,
    fd: FakeDiscord,
    gw: FakeGateway,
    bot: BotProcess,
    users: list[FakeUser],
    n: int,
    *,
    model: str,
    generation: float,
    sync: bool,
    timeout: float,  # noqa: ASYNC109 - seconds past the generation to wait for the last image
    dump: str = "",
) -> BurstResult:
    """Send `n` /imagine commands at once and measure until every reply has its image (or failed)."""
    bot.reset_peak_rss()
    await bot.loop_stats()
    first_discord_request = len(fd.requests)
    bot_cpu0, bench_cpu0 = bot.cpu_seconds(), sum(os.times()[:2])
    started = time.monotonic()
    prompts = [f"{label} job {i}" for i in range(n)]
    commands = (
        fd.send_slash_command("imagine", {"prompt": p, "model": model}, user=users[i]) for i, p in enumerate(prompts)
    )
    interactions: list[FakeInteraction] = list(await asyncio.gather(*commands))
    final_at: dict[int, float] = {}
    failed: set[int] = set()
    deadline = started + generation + timeout
    while len(final_at) + len(failed) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        for i, fi in enumerate(interactions):
            if i in final_at or i in failed:
                continue
            upload = next((r for r in fi.requests if r.files), None)
            if upload is not None:
                final_at[i] = upload.at
            elif fi.message is not None and any(
                f.get("name") == "Status" and str(f.get("value", "")).startswith(("Failed", "Cancelled"))
                for e in fi.message.embeds
                for f in e.get("fields", [])
            ):
                failed.add(i)
    wall = max(final_at.values(), default=time.monotonic()) - started
    bot_cpu, bench_cpu = bot.cpu_seconds() - bot_cpu0, sum(os.times()[:2]) - bench_cpu0
    peak = bot.peak_rss_mb()
    loop_stats = await bot.loop_stats()
    for part, (seconds, calls) in sorted(loop_stats.get("dispatch", {}).items()):  # BENCH_PROFILE_DISPATCH=1
        print(f"  [dispatch profile] {part}: {seconds:.2f}s in {calls:.0f} calls")
    stall, gc_pause = loop_stats["worst_stall"] * 1000, loop_stats.get("worst_gc", float("nan")) * 1000

    posts = {r.json.get("prompt"): r.at for r in gw.requests if r.kind == "POST" and isinstance(r.json, dict)}
    operations: dict[str, Operation] = {op.prompt: op for op in gw.operations.values()}
    admission, overhead, polls, lags = [], [], [], []
    acks, seen = [], []
    for i, fi in enumerate(interactions):
        prompt = prompts[i]
        ack = next((r.at for r in fi.requests if r.route.endswith("/callback")), None)
        if ack is not None:
            acks.append(ack - started)
        if ack is not None and prompt in posts:
            admission.append(posts[prompt] - ack)
        op = operations.get(prompt)
        if op is not None:
            polls.append(op.polls)
            if op.first_seen_done_at is not None:
                lags.append(op.first_seen_done_at - op.ready_at)
                seen.append(op.first_seen_done_at - started)
        if i in final_at:
            answered = posts[prompt] + generation if sync else (op.first_seen_done_at if op else None)
            if answered is not None:
                overhead.append(final_at[i] - answered)
    if dump:
        write_dump(dump, label, started, prompts, interactions, posts, operations, gw, final_at)
    burst_requests = fd.requests[first_discord_request:]
    by_token: dict[str, list[float]] = collections.defaultdict(list)
    global_times: list[float] = []
    for r in burst_requests:
        if r.route.startswith("/webhooks/"):
            by_token[r.path.split("/")[3]].append(r.at)
        elif not r.route.startswith("/interactions/"):
            global_times.append(r.at)
    token_excess, token_most = 0, 0
    for times in by_token.values():
        excess, most = over_limit(times, 2.0, 5)
        token_excess += excess
        token_most = max(token_most, most)
    global_excess, global_most = over_limit(global_times, 1.0, 50)
    if global_excess:
        routes = collections.Counter(
            f"{r.method} {r.route}" for r in burst_requests if not r.route.startswith(("/webhooks/", "/interactions/"))
        )
        print("  bot-token routes in the burst: " + ", ".join(f"{route} x{n}" for route, n in routes.most_common(4)))
    return BurstResult(
        label=label,
        n=n,
        delivered=len(final_at),
        failed=len(failed),
        wall_ratio=wall / generation,
        admission=admission,
        overhead=overhead,
        peak_rss_mb=peak,
        worst_stall_ms=stall,
        worst_gc_ms=gc_pause,
        polls_per_job=statistics.fmean(polls) if polls else None,
        lag_median=statistics.median(lags) if lags else None,
        lag_p95=quantile(lags, 0.95) if lags else None,
        discord_429=sum(1 for r in burst_requests if r.status == 429),
        token_excess=token_excess,
        token_most=token_most,
        global_excess=global_excess,
        global_most=global_most,
        bot_cpu=bot_cpu,
        bench_cpu=bench_cpu,
        wall=wall,
        timeline={
            "ack": max(acks, default=float("nan")),
            "POST": max((posts[p] - started for p in prompts if p in posts), default=float("nan")),
            "seen done": max(seen, default=float("nan")),
            "image": wall,
        },
    )


def write_dump(
    path: str,
    label: str,
    started: float,
    prompts: list[str],
    interactions: list[FakeInteraction],
    posts: dict[str, float],
    operations: dict[str, Operation],
    gw: FakeGateway,
    final_at: dict[int, float],
) -> None:
    """Per job, seconds from the first command: ack, POST, ready, each poll, image (--dump, JSON lines)."""
    polls: dict[str, list[float]] = collections.defaultdict(list)
    files: dict[str, float] = {}
    for r in gw.requests:
        if r.kind == "POLL":
            polls[r.path.rstrip("/").rsplit("/", 1)[-1]].append(r.at - started)
        elif r.kind == "FILE":
            files.setdefault(r.path.removeprefix("/files/").rsplit("-", 1)[0], r.at - started)
    with open(f"{path}.{label}.jsonl", "w") as out:
        for i, fi in enumerate(interactions):
            prompt = prompts[i]
            op = operations.get(prompt)
            ack = next((r.at for r in fi.requests if r.route.endswith("/callback")), None)
            row = {
                "ack": None if ack is None else ack - started,
                "post": posts[prompt] - started if prompt in posts else None,
                "ready": None if op is None else op.ready_at - started,
                "polls": [] if op is None else polls.get(op.id, []),
                "file": None if op is None else files.get(op.id),
                "image": final_at[i] - started if i in final_at else None,
            }
            out.write(json.dumps(row) + "\n")


async def main(args: argparse.Namespace) -> None:
    counts = [int(x) for x in args.jobs.split(",")]
    width, height, noise = parse_size(args.image)
    most = max([*counts, args.warmup])
    async with FakeDiscord() as fd, FakeGateway() as gw:
        assert fd.guild is not None
        users = [fd.guild.add_member(f"member{i}").user for i in range(most)]
        behaviour = gw.configure(args.model, image_size=(width, height), noise=noise)
        sync = behaviour.mode == "sync"
        gw.configure(args.model, sync_delay=args.generation, completion_delay=args.generation)
        image_bytes = len(gw._image_bytes(behaviour, 0))
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            if args.keep_log:
                tmp = args.keep_log
            bot = BotProcess(fd, gw, Path(tmp), most)
            await bot.start()
            try:
                print(
                    f"model {args.model} ({'sync' if sync else 'async'}), image {width}x{height}"
                    f" ({image_bytes / 1e6:.2f} MB), generation {args.generation:g}s,"
                    f" load average {os.getloadavg()[0]:.2f} at start"
                )
                if args.warmup:
                    warm = await run_burst(
                        "warm-up",
                        fd,
                        gw,
                        bot,
                        users,
                        args.warmup,
                        model=args.model,
                        generation=args.generation,
                        sync=sync,
                        timeout=args.timeout,
                    )
                    print(f"warm-up: {warm.delivered}/{warm.n} delivered (teaches the poll planner; not reported)")
                for index, n in enumerate(counts):
                    result = await run_burst(
                        f"burst{index + 1}",
                        fd,
                        gw,
                        bot,
                        users,
                        n,
                        model=args.model,
                        generation=args.generation,
                        sync=sync,
                        timeout=args.timeout,
                        dump=args.dump,
                    )
                    for line in result.lines():
                        print(line)
                    print(f"  load average {os.getloadavg()[0]:.2f}")
            finally:
                await bot.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", default="200,1000", help="comma-separated burst sizes")
    parser.add_argument("--image", default="1.5MB", help='image size per job ("1.5MB", "300KB", "small")')
    parser.add_argument("--generation", type=float, default=5.0, help="seconds every generation takes")
    parser.add_argument("--model", default=ASYNC_MODEL)
    parser.add_argument("--warmup", type=int, default=20, help="jobs run first to give the poll planner history")
    parser.add_argument("--keep-log", default="", help="run the bot in this directory and keep its log there")
    parser.add_argument("--dump", default="", help="write per-job timings to DUMP.<burst>.jsonl")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds past the generation to wait")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
