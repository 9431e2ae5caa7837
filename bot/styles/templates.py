"""Style templates: `{prompt}` marks where the member's text goes.

The member's text is put in with a plain replace, never `str.format`, so braces in a prompt or a template
cannot reach Python's formatting.
"""

from __future__ import annotations

import re

from bot.errors import InvalidValueError
from bot.i18n import Phrase

PLACEHOLDER = "{prompt}"
MAX_TEMPLATE_LENGTH = 1000
NAME_PATTERN = re.compile(r"[\w-]{1,32}")


def check_style(name: str, template: str) -> tuple[str, str]:
    """The normalised (name, template); `InvalidValueError` for a bad name or a template without {prompt}."""
    name = name.strip().lower()
    template = template.strip()
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidValueError(
            option=Phrase("field.style_name"), value=name[:50], allowed=Phrase("allowed.style_name")
        )
    if PLACEHOLDER not in template or len(template) > MAX_TEMPLATE_LENGTH:
        raise InvalidValueError(
            option=Phrase("field.template"),
            value=template[:50],
            allowed=Phrase("allowed.template", {"max": MAX_TEMPLATE_LENGTH, "placeholder": PLACEHOLDER}),
        )
    return name, template


def apply_style(template: str, prompt: str) -> str:
    """The final prompt: the template with every `{prompt}` replaced by the member's text."""
    return template.replace(PLACEHOLDER, prompt)
