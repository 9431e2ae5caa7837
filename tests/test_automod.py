"""AutoMod keyword rules as Discord defines them: wildcards, regexes on RE2, allow lists, exemptions, cache."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.errors import AutoModBlockedError
from bot.moderation.automod import AutoModChecker, RulesUnavailableError, parse_rules


def rule(**meta: Any) -> dict[str, Any]:
    extra = {k: meta.pop(k) for k in ("enabled", "trigger_type", "exempt_roles", "exempt_channels") if k in meta}
    return {
        "id": "1",
        "name": "r",
        "event_type": 1,
        "trigger_type": 1,
        "enabled": True,
        "trigger_metadata": meta,
    } | extra


def matches(text: str, **meta: Any) -> bool:
    (parsed,) = parse_rules([rule(**meta)])
    return parsed.matches(text)


@pytest.mark.parametrize(
    ("keyword", "text", "expected"),
    [
        ("cat", "a cat sat", True),  # whole word
        ("cat", "a Catapult", False),
        ("cat", "CAT!", True),  # any case
        ("cat*", "a Catapult", True),  # prefix
        ("cat*", "bobcat", False),
        ("*cat", "a bobcat", True),  # suffix
        ("*cat", "catapult", False),
        ("*cat*", "education", True),  # anywhere
        ("sleepy cat", "a sleepy  cat", True),  # phrases, any spacing
        ("sleepy cat", "a sleepy catapult", False),
        ("고양이", "귀여운 고양이 그림", True),  # any script
    ],
)
def test_keyword_wildcards_follow_discords_semantics(keyword: str, text: str, expected: bool) -> None:
    assert matches(text, keyword_filter=[keyword]) is expected


def test_allow_list_exempts_the_words_it_names_only() -> None:
    meta = {"keyword_filter": ["dragon*"], "allow_list": ["dragonfly"]}
    assert not matches("a dragonfly", **meta)
    assert matches("a dragonfly and a dragon", **meta)


def test_regex_patterns_run_on_re2_and_uncompilable_ones_are_skipped() -> None:
    assert matches("b@d w0rd", regex_patterns=[r"b[a@]d\s?w[o0]rd"])
    assert not matches("(a)(a)", regex_patterns=[r"(a)\1"])  # a backreference: RE2 refuses it, skipped


def test_only_enabled_keyword_rules_for_messages_count() -> None:
    payload = [rule(keyword_filter=["x"], enabled=False), rule(keyword_filter=["x"], trigger_type=4)]
    assert parse_rules(payload) == []


async def test_checker_caches_respects_exemptions_and_skips_without_permission() -> None:
    clock = [0.0]
    checker = AutoModChecker(ttl=60, clock=lambda: clock[0])
    fetched: list[int] = []
    rules = [rule(keyword_filter=["dragon"], exempt_roles=["7"], exempt_channels=["9"])]

    async def fetch() -> list[dict[str, Any]] | None:
        fetched.append(1)
        return rules

    with pytest.raises(AutoModBlockedError):
        await checker.check(1, "a dragon", fetch, role_ids=[3], channel_ids=[4])
    await checker.check(1, "a dragon", fetch, role_ids=[7], channel_ids=[4])  # an exempt role
    await checker.check(1, "a dragon", fetch, role_ids=[3], channel_ids=[9])  # an exempt channel
    assert len(fetched) == 1 and checker.status(1) == "active"
    clock[0] = 61.0
    rules.clear()
    await checker.check(1, "a dragon", fetch)  # read again after the cache expired: the rule is gone
    assert len(fetched) == 2

    async def forbidden() -> None:
        return None

    await checker.check(2, "a dragon", forbidden)
    assert checker.status(2) == "no_permission" and checker.status(3) == "unknown"


async def test_rules_discord_cannot_give_are_skipped_for_that_prompt_and_not_cached() -> None:
    checker = AutoModChecker()
    calls: list[int] = []

    async def failing() -> list[dict[str, Any]] | None:
        calls.append(1)
        raise RulesUnavailableError("503")

    await checker.check(1, "a dragon", failing)
    await checker.check(1, "a dragon", failing)
    assert len(calls) == 2 and checker.status(1) == "unknown"


async def test_checks_arriving_together_with_an_empty_cache_read_the_rules_once() -> None:
    """A burst of /imagine in a server whose rules are not cached asks Discord once, not once per command
    (each read is a bot-token request, and Discord allows 50 a second over all of them)."""
    checker = AutoModChecker()
    calls: list[int] = []
    release = asyncio.Event()

    async def fetch() -> list[dict[str, Any]] | None:
        calls.append(1)
        await release.wait()
        return [rule(keyword_filter=["dragon"])]

    checks = [asyncio.ensure_future(checker.check(1, f"a dragon {n}", fetch)) for n in range(20)]
    checks.append(asyncio.ensure_future(checker.check(1, "a fox", fetch)))
    await asyncio.sleep(0)
    checks[0].cancel()  # a caller that goes away does not cut the read the others wait for
    release.set()
    results = await asyncio.gather(*checks, return_exceptions=True)
    assert len(calls) == 1
    assert isinstance(results[0], asyncio.CancelledError)
    assert all(isinstance(r, AutoModBlockedError) for r in results[1:20]) and results[20] is None
    assert checker.status(1) == "active"
