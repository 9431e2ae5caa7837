"""The message catalog: every string a member or admin sees comes from here.

The words live in one TOML file per language, `bot/i18n/locales/<language>.toml` (English `en.toml`,
Korean `ko.toml`, with `bot/i18n/locales/GLOSSARY.ko.md` beside it). Put a new message there, in every
language. `EN` below is only a staging area for a branch written before the files existed: a key added
to it is shown in English everywhere (the files win on a clash) and the completeness test in
tests/test_i18n.py fails until it is moved into the files.
"""

from __future__ import annotations

from typing import Any

from bot.errors import BotError
from bot.i18n import DEFAULT_LANGUAGE, Phrase, catalogs, language_of, number, render

# Staging only (see the module docstring): move each key into locales/en.toml and locales/ko.toml.
EN: dict[str, str] = {}

PENDING: frozenset[str] = frozenset(set(EN) - set(catalogs()[DEFAULT_LANGUAGE]))
"""Keys that exist only in the staging dict above (the completeness test keeps this empty)."""

# `EN` becomes the full English view (files plus staging) so that `EN["key"]` keeps working for callers.
EN.update(catalogs()[DEFAULT_LANGUAGE])
CATALOG: dict[str, dict[str, str]] = {**catalogs(), DEFAULT_LANGUAGE: EN}
DEFAULT_LOCALE = DEFAULT_LANGUAGE


def has_text(key: str) -> bool:
    """Whether the catalog has message `key`."""
    return key in EN


def text(key: str, locale: str | None = None, /, **params: Any) -> str:
    """Render catalog entry `key` in the language of `locale` (falling back to English) with `params`."""
    language = language_of(locale)
    template = CATALOG.get(language, EN).get(key)
    if template is None:
        template, language = EN.get(key), DEFAULT_LANGUAGE
    if template is None:
        raise KeyError(f"no message {key!r} in the catalog")
    params = {
        name: text(value.key, locale, **value.params) if isinstance(value, Phrase) else value
        for name, value in params.items()
    }
    try:
        return render(template, language, params)
    except (KeyError, IndexError, ValueError):
        # A missing parameter must never turn a refusal into a crash; show the template's words.
        return template


def number_text(value: int, locale: str | None = None) -> str:
    """An integer (credits, counts) with the digit grouping of `locale`'s language."""
    return number(value, language_of(locale))


def error_text(error: BotError, locale: str | None = None) -> str:
    """The member-facing sentence for a domain error."""
    return text(error.message_key, locale, **error.params)
