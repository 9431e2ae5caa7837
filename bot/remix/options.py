"""A job's options as `name=value` lines (a modal holds text inputs only), and back."""

from __future__ import annotations

from bot.errors import InvalidValueError
from bot.generation.catalog import OPTION_NAMES
from bot.i18n import Phrase


def format_options(options: dict[str, str]) -> str:
    """One `name=value` line per option, in the catalog's option order."""
    return "\n".join(f"{name}={options[name]}" for name in OPTION_NAMES if options.get(name))


def parse_options(text: str) -> dict[str, str | None]:
    """Read `name=value` lines; `InvalidValueError` for a line that is not one or names no option.

    Values are checked against the model later, by the same catalog check /imagine uses.
    """
    options: dict[str, str | None] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        name, sep, value = line.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or name not in OPTION_NAMES or not value:
            raise InvalidValueError(
                option=Phrase("field.option_line"),
                value=line[:50],
                allowed=Phrase("allowed.option_line", {"names": ", ".join(OPTION_NAMES)}),
            )
        options[name] = value
    return options
