"""The message catalog covers every domain error, falls back to English and groups digits by language."""

from __future__ import annotations

import pytest

import bot.errors as errors
from bot.messages import EN, error_text, text


def all_error_classes() -> list[type[errors.BotError]]:
    found, stack = [], [errors.BotError]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return found


def test_every_error_has_a_message() -> None:
    missing = [cls.__name__ for cls in all_error_classes() if cls.message_key not in EN]
    assert missing == []


def test_an_unshipped_locale_falls_back_to_english_and_fills_parameters() -> None:
    error = errors.InsufficientCreditsError(needed=80, available=12)
    assert (
        error_text(error, "fr")
        == error_text(error, "en-US")
        == "This needs 80 credits and you have 12 available. Nothing was charged."
    )


def test_korean_locale_gets_korean_with_grouped_digits() -> None:
    error = errors.InsufficientCreditsError(needed=12_000, available=3_500)
    assert error_text(error, "ko") == (
        "12,000 크레딧이 필요한데 지금 쓸 수 있는 크레딧은 3,500 크레딧이에요. 크레딧은 차감되지 않았어요."
    )


def test_an_id_placeholder_keeps_plain_digits() -> None:
    assert text("admin.blocked_removed", "en", id=12345) == "Removed blocked term #12345."


def test_missing_parameter_never_crashes() -> None:
    assert text("error.prompt_too_long", "en") == EN["error.prompt_too_long"]


def test_a_refusal_names_the_field_and_the_rule_in_the_readers_language() -> None:
    from bot.credits.policy import check_timezone

    with pytest.raises(errors.InvalidValueError) as refused:
        check_timezone("Mars/Base")
    english, korean = error_text(refused.value, "en"), error_text(refused.value, "ko")
    assert english == "`Mars/Base` is not a valid timezone: use an IANA name such as Asia/Seoul."
    assert korean == (
        "`Mars/Base`은(는) 올바른 시간대 값이 아니에요. 이렇게 써 주세요: Asia/Seoul 같은 IANA 시간대 이름."
    )
