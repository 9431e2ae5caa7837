"""The model catalog: prices, sync or async, and the options each model takes, loaded from data.

Prices and models change, so they live in `bot/data/models.json`, which an operator can replace with
MODEL_CATALOG_PATH. `Catalog.prepare` turns a member's choices into the exact gateway parameters, sending
only the options a model lists: the gateway must never see a parameter a model does not take.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from bot.errors import InvalidCountError, InvalidOptionError, UnknownModelError, UnsupportedOptionError

# The member-facing options of /imagine besides prompt, model and count.
OPTION_NAMES = ("aspect_ratio", "quality", "size", "background")


class OptionSpec(BaseModel):
    """How one /imagine option maps onto a model: the gateway field it fills, and its allowed values."""

    field: str
    choices: list[str] | None = None  # None: the catalog-wide list (aspect ratios)


class ModelSpec(BaseModel):
    """One image model as the catalog describes it."""

    name: str = Field(min_length=1, max_length=100)
    provider: str
    price: int = Field(ge=0)
    mode: Literal["sync", "async"]
    # Up to 20: more than Discord's 10 attachments per message, which delivery handles with a follow-up.
    max_images: int = Field(default=1, ge=1, le=20)
    options: dict[str, OptionSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_options(self) -> ModelSpec:
        unknown = set(self.options) - set(OPTION_NAMES)
        if unknown:
            raise ValueError(f"model {self.name}: unknown options {sorted(unknown)}")
        return self

    def choices(self, option: str, aspect_ratios: list[str]) -> list[str] | None:
        """Allowed values of `option` for this model, or None when the model does not take it."""
        spec = self.options.get(option)
        if spec is None:
            return None
        return spec.choices if spec.choices is not None else aspect_ratios


class _CatalogFile(BaseModel):
    aspect_ratios: list[str]
    models: list[ModelSpec] = Field(min_length=1)


@dataclass(frozen=True)
class PreparedRequest:
    """A validated request: what to send to the gateway and what it costs."""

    model: ModelSpec
    count: int
    params: dict[str, str | int]  # gateway fields besides model and prompt
    options: dict[str, str]  # the member's choices, by /imagine option name (for display and re-rolls)

    @property
    def total_price(self) -> int:
        return self.model.price * self.count


class CatalogError(Exception):
    """The catalog file is missing or malformed; start-up stops with this message."""


class Catalog:
    """The set of models the bot offers, in catalog order."""

    def __init__(self, models: list[ModelSpec], aspect_ratios: list[str]) -> None:
        self._models = {m.name: m for m in models}
        self.aspect_ratios = list(aspect_ratios)

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        """Load the shipped catalog, or the operator's file at `path`."""
        try:
            if path is None:
                raw = resources.files("bot.data").joinpath("models.json").read_text(encoding="utf-8")
            else:
                raw = Path(path).read_text(encoding="utf-8")
            parsed = _CatalogFile.model_validate(json.loads(raw))
        except (OSError, json.JSONDecodeError, ValidationError) as exc:
            where = path or "the built-in catalog"
            raise CatalogError(f"model catalog {where} is unreadable: {exc}") from exc
        names = [m.name for m in parsed.models]
        if len(names) != len(set(names)):
            raise CatalogError("model catalog lists a model twice")
        return cls(parsed.models, parsed.aspect_ratios)

    @property
    def models(self) -> list[ModelSpec]:
        return list(self._models.values())

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def get(self, name: str) -> ModelSpec:
        """The model called `name`; `UnknownModelError` when there is none."""
        try:
            return self._models[name]
        except KeyError:
            raise UnknownModelError(model=name) from None

    def choices(self, model: str, option: str) -> list[str] | None:
        """Allowed values of `option` for `model` (None when the model does not take it)."""
        return self.get(model).choices(option, self.aspect_ratios)

    def prepare(self, model: str, count: int, options: dict[str, str | None]) -> PreparedRequest:
        """Check a member's choices against the model and build the gateway parameters.

        Raises a `RequestError` subclass naming the first problem; nothing is spent before this passes.
        """
        spec = self.get(model)
        if not 1 <= count <= spec.max_images:
            raise InvalidCountError(count=count, model=spec.name, limit=spec.max_images)
        params: dict[str, str | int] = {}
        chosen: dict[str, str] = {}
        for option in OPTION_NAMES:
            value = options.get(option)
            if value is None or value == "":
                continue
            allowed = spec.choices(option, self.aspect_ratios)
            if allowed is None:
                raise UnsupportedOptionError(option=option, model=spec.name)
            if value not in allowed:
                raise InvalidOptionError(option=option, value=value, model=spec.name, allowed=", ".join(allowed))
            params[spec.options[option].field] = value
            chosen[option] = value
        if spec.max_images > 1:
            # Only models that list number_of_images get it.
            params["number_of_images"] = count
        return PreparedRequest(model=spec, count=count, params=params, options=chosen)
