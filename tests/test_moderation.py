"""Blocked terms: whole words in any script, safe regexes, refusal of what cannot be checked safely."""

from __future__ import annotations

import pytest

from bot.errors import InvalidValueError
from bot.moderation import compile_term, find_blocked
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
