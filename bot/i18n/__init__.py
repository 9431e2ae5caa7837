"""Languages: one TOML file per language in `bot/i18n/locales/`, loaded once, and how a locale picks one.

A file's tables become dotted keys (`[error]` + `prompt_empty` is `error.prompt_empty`). English
(`en.toml`) is complete and is the fallback for a key another language lacks; adding a language is
adding `locales/<code>.toml` with the same keys (the completeness test says which are missing).

Templates use `str.format` placeholders. An `int` parameter is written with the language's digit grouping
(Babel's CLDR data: `12,345` in English and Korean, `12.345` in German), unless the placeholder asks for
plain digits with `:d` (ids such as `#{id:d}`). A `Phrase` parameter is itself a catalog message, rendered
in the same language (an error names the field and the rule in the reader's words, not in English).
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from typing import Any

from babel.numbers import format_decimal

DEFAULT_LANGUAGE = "en"
LOCALES_PACKAGE = "bot.i18n.locales"


@dataclass(frozen=True)
class Phrase:
    """A catalog message used as a parameter of another: rendered in the language of the message around it."""

    key: str
    params: Mapping[str, Any] = field(default_factory=dict)


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(_flatten(value, key + "."))
        elif isinstance(value, str):
            flat[key] = value
        else:
            raise ValueError(f"{key}: a message must be a string, not {type(value).__name__}")
    return flat


@cache
def catalogs() -> dict[str, dict[str, str]]:
    """Every shipped language's messages: {"en": {...}, "ko": {...}}, read once from the TOML files."""
    found: dict[str, dict[str, str]] = {}
    for entry in resources.files(LOCALES_PACKAGE).iterdir():
        if entry.name.endswith(".toml"):
            found[entry.name.removesuffix(".toml")] = _flatten(tomllib.loads(entry.read_text("utf-8")))
    if DEFAULT_LANGUAGE not in found:
        raise RuntimeError(f"no {DEFAULT_LANGUAGE}.toml in {LOCALES_PACKAGE}")
    return found


def languages() -> tuple[str, ...]:
    """The shipped languages, English first."""
    return (DEFAULT_LANGUAGE, *sorted(set(catalogs()) - {DEFAULT_LANGUAGE}))


def language_of(locale: str | None) -> str:
    """The language for a Discord locale: `ko` gives Korean, `en-US` English, anything not shipped English."""
    if not locale:
        return DEFAULT_LANGUAGE
    code = str(locale).lower()
    shipped = catalogs()
    if code in shipped:
        return code
    base = code.split("-")[0]
    return base if base in shipped else DEFAULT_LANGUAGE


def placeholders(template: str) -> set[str]:
    """The names a template fills in (`{name}`, `{name:d}` are both `name`)."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


@lru_cache(maxsize=4096)
def number(value: int, language: str) -> str:
    """An integer written the way `language` groups digits (`1,234,567`).

    Cached: Babel takes ~0.1 ms a number, and every progress edit formats a few (elapsed seconds, queue
    positions, credits), which at a thousand running jobs was seconds of the event loop's time."""
    return str(format_decimal(value, locale=language, group_separator=True))


class _Formatter(string.Formatter):
    """`str.format` that groups the digits of int parameters by language (see the module docstring)."""

    def __init__(self, language: str) -> None:
        self.language = language

    def format_field(self, value: Any, format_spec: str) -> str:
        if not format_spec and isinstance(value, int) and not isinstance(value, bool):
            return number(value, self.language)
        return super().format_field(value, format_spec)


def render(template: str, language: str, params: dict[str, Any]) -> str:
    """Fill `template` with `params`, numbers grouped for `language`."""
    return _Formatter(language).vformat(template, (), params)


def server_language(setting: str | None, preferred_locale: str | None) -> str:
    """The language of what the bot posts on its own in a server: the admin's setting, unless it is
    "auto" (or unset), then the server's Discord preferred locale."""
    if setting and setting != "auto":
        return language_of(setting)
    return language_of(preferred_locale)
