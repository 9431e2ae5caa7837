"""Blocked terms: whole words in any script, safe regexes, refusal of what cannot be checked safely, and a
compiled list cached per server until any process changes it."""

from __future__ import annotations

from typing import Any

import pytest

import bot.moderation.blocklist as moderation
from bot.errors import BlockedPromptError, InvalidValueError
from bot.moderation.blocklist import Blocklist, Moderator, compile_term, find_blocked
from bot.store.base import Store
from bot.store.records import BlockedTerm


def term(pattern: str, is_regex: bool = False, term_id: int = 1) -> BlockedTerm:
    return BlockedTerm(id=term_id, guild_id=1, pattern=pattern, is_regex=is_regex, created_by=9, created_at=0.0)


@pytest.mark.parametrize(
    ("prompt", "blocked"),
    [
        ("a Forbidden Fruit basket", True),
        ("FORBIDDEN\n  fruit", True),
        ("forbiddenfruit stand", False),
        ("unforbidden fruitcake", False),
    ],
)
def test_plain_phrases_match_whole_words_in_any_case(prompt: str, blocked: bool) -> None:
    assert (find_blocked(prompt, [term("forbidden fruit")]) is not None) is blocked


def test_whole_words_work_beyond_ascii() -> None:
    assert find_blocked("귀여운 고양이 그림", [term("고양이")]) is not None
    assert find_blocked("고양이들", [term("고양이")]) is None  # part of a longer word


def test_regexes_run_in_linear_time_even_when_written_to_backtrack() -> None:
    # Under Python's re this pattern takes exponential time on the prompt below; RE2 answers at once.
    evil = compile_term("(a+)+$", is_regex=True)
    assert evil.search("a" * 1500 + "!") is None
    assert find_blocked("x" + "a" * 1500, [term("(a+)+$", is_regex=True)]) is not None


@pytest.mark.parametrize("pattern", [r"(\w)\1", "(?<=x)y", "(unclosed", "", "   ", "x" * 201])
def test_patterns_that_cannot_be_checked_safely_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidValueError):
        compile_term(pattern, is_regex=True)


def test_regexes_are_case_insensitive() -> None:
    assert find_blocked("A DRAGON", [term(r"drag(on|oon)", is_regex=True)]) is not None


def test_words_typed_apart_match_across_any_unicode_space() -> None:
    assert find_blocked("a forbidden\u00a0fruit", [term("forbidden fruit")]) is not None
    assert find_blocked("forbidden\u3000\tfruit!", [term("forbidden fruit")]) is not None


# --- the compiled list: one program, the same answers as each term alone ----------------------------------

TERMS = [
    term("forbidden fruit", term_id=1),
    term("고양이", term_id=2),
    term(r"drag(on|oon)", is_regex=True, term_id=3),
    term(r"^start", is_regex=True, term_id=4),
    term("c++", term_id=5),
    term(r"(?i)Ab\d{2}", is_regex=True, term_id=6),
    term(r"\Qa.b\E", is_regex=True, term_id=7),
]
PROMPTS = [
    "nothing to see",
    "a forbidden fruit",
    "forbiddenfruit",
    "귀여운 고양이",
    "고양이들",
    "DRAGOON",
    "not at the start",
    "start here",
    "learn c++ today",
    "c++x",
    "ab12",
    "a.b",
    "axb",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_the_compiled_list_answers_as_its_terms_would_alone(prompt: str) -> None:
    alone = next((t for t in TERMS if compile_term(t.pattern, t.is_regex).search(prompt) is not None), None)
    blocklist = Blocklist.compile(TERMS)
    assert len(blocklist.parts) == 1
    assert blocklist.first_match(prompt) == alone
    assert blocklist.matches(prompt) is (alone is not None)


def test_a_list_too_big_for_one_program_is_split_and_a_broken_stored_term_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(moderation, "_LIST_MEMORY", 1 << 16)  # far too small for the whole list
    stored = [*TERMS, term(r"\Qunterminated", is_regex=True, term_id=8)]  # passed an older, laxer check
    blocklist = Blocklist.compile(stored)
    assert len(blocklist.parts) > 1
    for prompt in PROMPTS:
        alone = next((t for t in TERMS if compile_term(t.pattern, t.is_regex).search(prompt) is not None), None)
        assert blocklist.first_match(prompt) == alone


# --- the cache: compiled once per server, recompiled after any process changes the list -------------------


class CountingCompiles:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = moderation.re2.compile

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(moderation.re2, "compile", counting)


async def test_a_servers_list_is_compiled_once_and_again_only_after_a_change(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(50):
        await store.add_blocked_term(1, f"word{i}", False, actor_id=9, now=0.0)
    await store.add_blocked_term(2, "other", False, actor_id=9, now=0.0)
    moderator = Moderator(store)
    compiles = CountingCompiles(monkeypatch)
    for _ in range(20):
        await moderator.check(1, "a harmless prompt")
    assert compiles.calls == 1, "one program for the whole list, compiled once"
    with pytest.raises(BlockedPromptError):
        await moderator.check(1, "say word7 now")
    await moderator.check(2, "say word7 now")  # each server has its own list
    assert compiles.calls == 2

    await store.add_blocked_term(1, "harmless", False, actor_id=9, now=1.0)
    with pytest.raises(BlockedPromptError):
        await moderator.check(1, "a harmless prompt")
    assert compiles.calls == 3
    await moderator.check(1, "a kind prompt")
    assert compiles.calls == 3


async def test_a_change_made_by_another_process_is_seen_by_the_next_prompt(
    shared_stores: tuple[Store, Store],
) -> None:
    ours, theirs = shared_stores
    moderator = Moderator(ours)
    await moderator.check(1, "a red dragon")  # compiled and cached: nothing blocked
    added = await theirs.add_blocked_term(1, "dragon", False, actor_id=9, now=0.0)
    assert added is not None
    with pytest.raises(BlockedPromptError):
        await moderator.check(1, "a red dragon")
    assert await theirs.remove_blocked_term(1, added.id, actor_id=9, now=1.0)
    await moderator.check(1, "a red dragon")
