"""LOG_FORMAT=json: every line about a job carries its job id, server id and model; no prompt at INFO."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bot.logs import configure_logging
from tests.e2e.harness import World
from tests.e2e.test_admin import deliver
from tests.fakes.fake_gateway import Reply


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The production logging set-up for one test, written to a buffer instead of stdout; then pytest's again."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("INFO", "json")
    buffer = io.StringIO()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_json_lines_about_a_job_carry_its_fields_and_never_its_prompt(
    world: World, json_logs: io.StringIO
) -> None:
    await world.start()
    world.gw.configure("xai/grok-imagine-image", completion_delay=0.2)
    delivered = await deliver(world, "a zeppelin over Seoul", user=world.fd.alice, model="xai/grok-imagine-image")
    world.gw.enqueue(Reply.error(500, "boom"), method="POST")
    fi = await world.imagine("a zeppelin that fails", user=world.fd.alice, model="gemini-2.5-flash-image")
    await world.finished(fi)
    failed = await world.job_of(fi)

    lines = [json.loads(line) for line in json_logs.getvalue().splitlines() if line.startswith("{")]
    assert lines, "the bot logged JSON lines"
    assert not [line for line in lines if "zeppelin" in json.dumps(line, ensure_ascii=False)], "no prompt in any line"
    for job in (delivered, failed):
        about = [line for line in lines if job.id in line["message"]]
        assert len(about) >= 2, f"lines about job {job.id}"
        for line in about:
            assert (line["job_id"], line["guild_id"], line["model"]) == (job.id, job.guild_id, job.model), line
    # Lines inside the job's own work that do not name it carry it too (the gateway's "accepted" line).
    accepted = [line for line in lines if line["message"].startswith("gateway accepted")]
    assert accepted and all(line["job_id"] == delivered.id for line in accepted)
