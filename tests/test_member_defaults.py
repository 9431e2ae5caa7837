"""Saved defaults fill only what a member left out; what the chosen model does not take is dropped. Styles."""

from __future__ import annotations

import pytest

from bot.errors import InvalidValueError, UnknownModelError
from bot.generation.catalog import Catalog
from bot.members import apply_defaults, clean_defaults
from bot.styles import apply_style, check_style

CATALOG = Catalog.load()
SAVED = {"model": "gemini-2.5-flash-image", "aspect_ratio": "16:9", "count": 3, "quality": "high"}


def fill(model: str | None = None, count: int | None = None, **options: str | None) -> tuple[str | None, int, dict]:
    return apply_defaults(
        CATALOG, SAVED, model=model, count=count, options=options, fallback_model="gemini-2.5-flash-image"
    )


def test_defaults_fill_what_is_left_out() -> None:
    assert fill() == ("gemini-2.5-flash-image", 3, {"aspect_ratio": "16:9"})


def test_an_explicit_choice_wins() -> None:
    assert fill(count=1, aspect_ratio="1:1") == ("gemini-2.5-flash-image", 1, {"aspect_ratio": "1:1"})


def test_options_and_counts_the_chosen_model_does_not_take_are_dropped() -> None:
    assert fill(model="gpt-image-1-mini") == ("gpt-image-1-mini", 1, {"quality": "high"})


def test_saving_checks_models_and_values_against_the_catalog() -> None:
    assert clean_defaults(CATALOG, {"quality": "high", "size": None}) == {"quality": "high"}
    with pytest.raises(UnknownModelError):
        clean_defaults(CATALOG, {"model": "no-such-model"})
    with pytest.raises(InvalidValueError):
        clean_defaults(CATALOG, {"aspect_ratio": "7:3"})


def test_a_style_wraps_the_prompt_without_formatting_it() -> None:
    name, template = check_style(" Noir ", "{prompt}, film noir {lighting}")
    assert name == "noir"
    assert apply_style(template, "a {cat}") == "a {cat}, film noir {lighting}"
    with pytest.raises(InvalidValueError):
        check_style("noir", "no placeholder")
    with pytest.raises(InvalidValueError):
        check_style("two words", "{prompt}")
