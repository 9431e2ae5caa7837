"""Run the bot as production does (`bot.__main__.run`) against the fake Discord and the fake gateway.

A `World` owns both fakes and one database; `start()` boots a bot process, `stop()` shuts it down as
SIGTERM would, and `start()` again is a restart on the same database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.__main__ import run
from bot.config import Settings
from bot.discord_app import ImagineBot
from bot.i18n import languages
from bot.messages import text
from bot.store import open_store
from bot.store.base import Store
from bot.store.records import EntryKind, JobRecord
from tests.fakes.fake_discord import DEFAULT_TOKEN, FakeDiscord, FakeInteraction, FakeMessage, MessageRevision
from tests.fakes.fake_gateway import FakeGateway

ROOT = Path(__file__).resolve().parents[2]  # the project, for a child process's PYTHONPATH
WAIT = 20.0  # seconds any single wait may take before the test fails


@dataclass
class World:
    fd: FakeDiscord
    gw: FakeGateway
    tmp: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    bot: ImagineBot | None = None
    _task: asyncio.Task[None] | None = None
    _patch: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            discord_token=DEFAULT_TOKEN,
            gateway_api_key=self.gw.api_key,
            gateway_base_url=self.gw.base_url,
            database_url=f"sqlite:///{self.tmp / 'bot.db'}",
            allow_loopback_http=True,
            dev_guild_id=self.fd.guild.id if self.fd.guild else None,
            progress_edit_interval=0.2,
            poll_default_expected_seconds=0.5,
            poll_min_interval=0.05,
            poll_max_interval=0.25,
            shutdown_grace_seconds=0.5,
            quote_threshold=0,
            guild_ready_timeout=0.05,
            # The bots of many tests share this process: freezing each one's heap would keep it forever.
            gc_freeze_after_start=False,
        )
        values.update(self.overrides)
        values.update(overrides)
        return Settings(_env_file=None, **values)

    async def start(self, *, wait_for_jobs: bool = True, **overrides: Any) -> ImagineBot:
        """Boot the bot through the production start-up path and wait until it takes jobs (unless
        `wait_for_jobs` is False: then only until it is connected)."""
        assert self._task is None, "already running"
        self._patch.enter_context(self.fd.patch_discord())
        started: asyncio.Future[ImagineBot] = asyncio.get_running_loop().create_future()
        before = self.fd.identify_count
        self._task = asyncio.create_task(run(self.settings(**overrides), on_ready=started.set_result), name="bot")
        await self._unless_stopped(started)
        bot = self.bot = started.result()
        await self._unless_stopped(asyncio.ensure_future(bot.wait_until_ready()))
        assert self.fd.identify_count > before, "a new gateway session"
        if wait_for_jobs:
            await asyncio.wait_for(bot.services.jobs.wait_started(), WAIT)
        return bot

    async def _unless_stopped(self, step: asyncio.Future[Any]) -> None:
        """Wait for a start-up step; if the bot stops first, re-raise why (e.g. a StartupError)."""
        assert self._task is not None
        done, _ = await asyncio.wait({self._task, step}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        if step in done:
            return
        step.cancel()
        task, self._task, self.bot = self._task, None, None
        self._patch.close()
        if task in done:
            task.result()
            raise RuntimeError("the bot stopped during start-up")
        task.cancel()
        raise TimeoutError("the bot did not start")

    async def stop(self) -> None:
        """Shut the bot down as SIGTERM does (stop taking jobs, persist running ones, disconnect)."""
        if self._task is None:
            return
        assert self.bot is not None
        await self.bot.close()
        await asyncio.wait_for(self._task, WAIT)
        self._task = None
        self.bot = None
        self._patch.close()

    async def start_process(self, **overrides: Any) -> asyncio.subprocess.Process:
        """Run the bot as a real process (`python -m bot`'s `main()`), pointed at the fakes.

        Only discord.py's two base URLs are patched in the child, as `FakeDiscord.patch_discord` does here.
        """
        settings = self.settings(**overrides)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "GATEWAY_", "DATABASE_"))}
        for name, value in settings.model_dump().items():
            if value is None:
                continue
            secret = getattr(value, "get_secret_value", None)
            env[name.upper()] = str(secret() if secret else value)
        env.update(FAKE_DISCORD_API=self.fd.api_base, FAKE_DISCORD_GATEWAY=self.fd.gateway_url)
        env["PYTHONPATH"] = str(ROOT)
        # Its stdout and stderr are the test's, so a start-up failure (one line on stderr) shows in the report.
        return await asyncio.create_subprocess_exec(sys.executable, "-c", _CHILD, env=env, cwd=self.tmp)

    @property
    def store(self) -> Store:
        assert self.bot is not None, "the bot is not running"
        return self.bot.services.store

    async def imagine(self, prompt: str, *, user: Any = None, locale: str = "en-US", **options: Any) -> FakeInteraction:
        """Run /imagine as a member whose Discord client is in `locale`."""
        return await self.fd.send_slash_command("imagine", {"prompt": prompt, **options}, user=user, locale=locale)

    async def command(self, path: str, options: dict[str, Any] | None = None, **kwargs: Any) -> FakeInteraction:
        """Run any slash command (`"quota grant"`, ...) and wait for Discord to get its answer."""
        fi = await self.fd.send_slash_command(path, options or {}, **kwargs)
        await fi.wait_for_callback(WAIT)
        return fi

    async def finished(self, fi: FakeInteraction, timeout: float = WAIT) -> FakeMessage:
        """The job's reply once it shows a result or a failure, and once the job is settled."""
        message = await fi.wait_for_message_state(lambda m: _status(m) in ("done", "failed"), timeout)
        job = await self.job_of(fi)
        assert self.bot is not None
        await asyncio.wait_for(self.bot.services.jobs.join(job.id), timeout)
        return message

    async def job_of(self, fi: FakeInteraction) -> JobRecord:
        """The stored job created by an interaction, found by its reply message.

        The reply exists before the hold; its first edit comes from the job, so the row exists by then.
        """
        await fi.wait_for_edit(None, WAIT)
        assert fi.message is not None
        jobs = await self.store.active_jobs() + await self.store.recent_jobs(fi.guild_id or 0, fi.user.id, 100)
        for job in jobs:
            if job.reply_message_id == fi.message.id:
                return job
        raise AssertionError(f"no job for reply {fi.message.id}")

    async def ledger_of(self, job_id: str) -> dict[EntryKind, int]:
        """Ledger totals by kind for one job."""
        totals: dict[EntryKind, int] = {}
        job = await self.store.get_job(job_id)
        assert job is not None
        for entry in await self.store.ledger_entries(job.guild_id, 0, 1e12):
            if entry.job_id == job_id:
                totals[entry.kind] = totals.get(entry.kind, 0) + entry.amount
        return totals

    async def open_store(self) -> Store:
        """A store on the bot's database while the bot is stopped (close it when done)."""
        store = open_store(self.settings().database_url)
        await store.open()
        return store


def _in_every_language(key: str) -> set[str]:
    return {text(key, language) for language in languages()}


_CHILD = """
import os, yarl, discord.gateway, discord.http
discord.http.Route.BASE = os.environ["FAKE_DISCORD_API"]
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["FAKE_DISCORD_GATEWAY"])
from bot.__main__ import main
main()
"""


def _status(message: FakeMessage | MessageRevision) -> str | None:
    """What the reply says: "done", "failed" or None (still working), from its status field and files.

    Works in every shipped language: the status field's name and its first word come from the catalog."""
    if message.attachments:
        return "done"
    ended = tuple(_in_every_language("status.failed") | _in_every_language("status.cancelled"))
    for embed in message.embeds:
        for item in embed.get("fields", []):
            if item.get("name") in _in_every_language("embed.status") and item.get("value", "").startswith(ended):
                return "failed"
    return None


def status_line(message: FakeMessage | MessageRevision) -> str:
    """The status field of the reply's first embed (in whatever language it is shown)."""
    for embed in message.embeds:
        for item in embed.get("fields", []):
            if item.get("name") in _in_every_language("embed.status"):
                return str(item.get("value", ""))
    return ""


def visible(shown: Any) -> list[str]:
    """Every piece of text a member sees in a message or an interaction callback: content, embed title,
    description, field names and values, footer, and button labels."""
    if isinstance(shown, dict):
        content, embeds, components = shown.get("content"), shown.get("embeds") or [], shown.get("components") or []
    else:
        content, embeds, components = shown.content, shown.embeds, shown.components
    found = [content] if content else []
    for embed in embeds:
        found += [embed.get("title"), embed.get("description"), (embed.get("footer") or {}).get("text")]
        for item in embed.get("fields", []):
            found += [item.get("name"), item.get("value")]
    stack = list(components)
    while stack:
        component = stack.pop()
        found.append(component.get("label"))
        stack += component.get("components", [])
    return [piece for piece in found if piece]


def button(message: object, action: str) -> str:
    """The custom_id of a job button ("cancel", "reroll", "delete") on a message."""
    return next(cid for cid in message.custom_ids if cid.startswith(f"imagine:{action}:"))  # type: ignore[attr-defined]
