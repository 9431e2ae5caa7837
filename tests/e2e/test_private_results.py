"""A result URL that points into the operator's network is never fetched: the member is told the image could
not be downloaded and refunded, and the operator's log says why."""

from __future__ import annotations

import logging

import pytest

from bot.store.records import EntryKind, JobStatus
from tests.e2e.harness import World, status_line
from tests.e2e.test_resilience import ASYNC_MODEL, ASYNC_PRICE
from tests.fakes.tcp_probe import ConnectionProbe


@pytest.mark.parametrize(
    ("allow_loopback", "host", "why"),
    [
        (False, "127.0.0.1", "loopback"),  # loopback, as in production
        (True, "[::ffff:127.0.0.1]", "IPv4-mapped"),  # refused even where tests allow loopback
    ],
)
async def test_result_url_into_a_private_network_is_refunded_and_never_fetched(
    world: World, caplog: pytest.LogCaptureFixture, allow_loopback: bool, host: str, why: str
) -> None:
    async with ConnectionProbe() as probe:
        await world.start(allow_loopback_http=allow_loopback)
        world.gw.configure(ASYNC_MODEL, completion_delay=0.1, result_url_base=f"https://{host}:{probe.port}/files")
        with caplog.at_level(logging.WARNING, logger="bot.generation.gateway"):
            fi = await world.imagine("the server room", model=ASYNC_MODEL)
            message = await world.finished(fi)
        assert "could not be downloaded" in status_line(message) and "refunded" in status_line(message)
        job = await world.job_of(fi)
        assert job.status == JobStatus.FAILED
        assert await world.ledger_of(job.id) == {EntryKind.HOLD: ASYNC_PRICE, EntryKind.RELEASE: ASYNC_PRICE}
        assert probe.connections == 0, "something connected to the private address"
        assert not [r for r in world.gw.requests if r.kind == "FILE"]
        refusals = [r.getMessage() for r in caplog.records if "refused to download" in r.getMessage()]
        assert refusals and why in refusals[0]
