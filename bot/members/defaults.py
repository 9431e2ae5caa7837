"""Saved /imagine defaults: what a member gets for the options they leave out.

An explicit option always wins. A saved option the chosen model does not take (or no longer takes with
that value) is dropped silently: defaults are a convenience, never a reason to refuse a request.
"""

from __future__ import annotations

from typing import Any

from bot.errors import InvalidValueError
from bot.generation.catalog import OPTION_NAMES, Catalog

DEFAULT_KEYS = ("model", "count", *OPTION_NAMES)


def clean_defaults(catalog: Catalog, values: dict[str, Any]) -> dict[str, Any]:
    """What a member may save: a model of the catalog, a count from 1 to 20, and option values that some
    model takes (options are model-specific, so each applies only when the chosen model takes it).

    Raises `UnknownModelError` or `InvalidValueError`; nothing is saved then.
    """
    saved: dict[str, Any] = {k: v for k, v in values.items() if v is not None and k in DEFAULT_KEYS}
    if "model" in saved:
        catalog.get(saved["model"])  # raises UnknownModelError
    for option in OPTION_NAMES:
        if option not in saved:
            continue
        taken = sorted({v for spec in catalog.models for v in (spec.choices(option, catalog.aspect_ratios) or [])})
        if saved[option] not in taken:
            raise InvalidValueError(option=option, value=str(saved[option])[:50], allowed=", ".join(taken))
    return saved


def apply_defaults(
    catalog: Catalog,
    saved: dict[str, Any],
    *,
    model: str | None,
    count: int | None,
    options: dict[str, str | None],
    fallback_model: str,
) -> tuple[str | None, int, dict[str, str | None]]:
    """Fill what the member left out from `saved`; returns (model, count, options) to check as usual."""
    chosen_model = model or saved.get("model")
    if chosen_model is not None and chosen_model not in catalog:
        chosen_model = model  # a saved model that left the catalog is forgotten; an explicit one is refused
    effective = chosen_model or fallback_model
    spec = catalog.get(effective) if effective in catalog else None
    merged = dict(options)
    for option in OPTION_NAMES:
        if merged.get(option) or option not in saved or spec is None:
            continue
        allowed = spec.choices(option, catalog.aspect_ratios)
        if allowed is not None and saved[option] in allowed:
            merged[option] = saved[option]
    if count is not None:
        return chosen_model, count, merged
    saved_count = saved.get("count")
    if isinstance(saved_count, int) and spec is not None and 1 <= saved_count <= spec.max_images:
        return chosen_model, saved_count, merged
    return chosen_model, 1, merged
