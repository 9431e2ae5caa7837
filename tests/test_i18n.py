"""Completeness of the translations: every key in every language with the same placeholders, no Korean left
identical to the English, and every slash command, option and choice described in Korean."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from bot.discord_app import EXTENSIONS, CatalogTranslator, language_choices
from bot.i18n import catalogs, language_of, languages, placeholders, server_language
from bot.messages import PENDING

# Strings that are names or symbols, the same in every language.
SAME_IN_EVERY_LANGUAGE = {
    "blocklist.line",  # `{id}` `{pattern}`
    "choice.ko",  # a language's own name
    "language_name.ko",
    "audit.line",
    "styles.line",  # `{name}` · {template}
}


def test_no_key_is_left_in_the_staging_dict() -> None:
    assert PENDING == frozenset(), "move these keys from bot/messages.py EN into every locales/*.toml"


@pytest.mark.parametrize("language", [code for code in catalogs() if code != "en"])
def test_every_english_key_is_translated_with_the_same_placeholders(language: str) -> None:
    english, other = catalogs()["en"], catalogs()[language]
    assert sorted(set(english) - set(other)) == []
    mismatched = {key: (placeholders(english[key]), placeholders(other[key])) for key in english}
    assert {k: v for k, v in mismatched.items() if v[0] != v[1]} == {}


def test_korean_is_not_a_copy_of_the_english() -> None:
    english, korean = catalogs()["en"], catalogs()["ko"]
    copies = [k for k in english if korean.get(k) == english[k] and k not in SAME_IN_EVERY_LANGUAGE]
    assert copies == []


def test_locales_pick_a_shipped_language() -> None:
    assert languages() == ("en", "ko")
    assert [language_of(x) for x in ("ko", "KO", "en-US", "en-GB", "ja", None, "")] == ["ko", "ko"] + ["en"] * 5
    assert server_language("auto", "ko") == "ko" and server_language("en", "ko") == "en"
    assert server_language("ko", "en-US") == "ko" and server_language(None, "de") == "en"


def _walk(command: Any) -> list[Any]:
    if isinstance(command, app_commands.Group):
        return [command] + [sub for child in command.commands for sub in _walk(child)]
    return [command]


async def _translated_payloads() -> tuple[list[dict[str, Any]], list[Any]]:
    bot = commands.Bot(command_prefix="!", intents=discord.Intents.none())
    # The cogs only keep references at load time; the operator cog wires its alert sinks.
    bot.services = SimpleNamespace(alerts=SimpleNamespace(operator_sink=None))  # type: ignore[attr-defined]
    bot.settings = SimpleNamespace(operator_alert_channel_id=None)  # type: ignore[attr-defined]
    bot.spawn = lambda work, name: asyncio.create_task(work, name=name)  # type: ignore[attr-defined]
    for extension in EXTENSIONS:
        await bot.load_extension(extension)
    for task in asyncio.all_tasks():  # the imagine cog's job starter waits for a login that never comes
        if task.get_name() == "start-jobs":
            task.cancel()
    translator = CatalogTranslator()
    payloads = [await c.get_translated_payload(bot.tree, translator) for c in bot.tree.get_commands()]
    every = [sub for c in bot.tree.get_commands() for sub in _walk(c)]
    return payloads, every


def _options(payload: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, payload)]
    for option in payload.get("options", []):
        if option["type"] in (1, 2):  # subcommand, subcommand group
            found += _options(option, f"{path} {option['name']}")
        else:
            found.append((f"{path} [{option['name']}]", option))
            found += [(f"{path} [{option['name']}={c['value']}]", c) for c in option.get("choices", [])]
    return found


async def test_every_command_option_and_choice_has_a_korean_description() -> None:
    payloads, _ = await _translated_payloads()
    missing = []
    for payload in payloads:
        for path, item in _options(payload, payload["name"]):
            field = "name_localizations" if "=" in path else "description_localizations"
            korean = (item.get(field) or {}).get("ko")
            english = item["name"] if "=" in path else item["description"]
            if not korean or (korean == english and path.split("=")[-1].rstrip("]") not in {"ko"}):
                missing.append(path)
    assert missing == []


async def test_natural_korean_command_names() -> None:
    payloads, _ = await _translated_payloads()
    by_name = {p["name"]: p for p in payloads}
    assert by_name["imagine"]["name_localizations"] == {"ko": "이미지"}
    assert by_name["credits"]["name_localizations"] == {"ko": "크레딧"}
    listing = next(o for o in by_name["models"]["options"] if o["name"] == "list")
    assert listing["name_localizations"] == {"ko": "목록"}


def test_server_language_offers_every_shipped_language() -> None:
    assert [c.value for c in language_choices()] == ["auto", "en", "ko"]
