"""The model catalog: the reference table as data, and only listed options ever reach the gateway."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.errors import InvalidCountError, InvalidOptionError, UnknownModelError, UnsupportedOptionError
from bot.generation.catalog import Catalog, CatalogError

# The table of ../shared/docs/image-api.md: model -> (credits per image, mode).
REFERENCE = {
    "gemini-2.5-flash-image": (39, "sync"),
    "gemini-3-pro-image-preview": (145, "sync"),
    "gpt-image-1.5": (38, "sync"),
    "gpt-image-1": (42, "sync"),
    "gpt-image-1-mini": (8, "sync"),
    "black-forest-labs/flux-2-pro": (30, "async"),
    "black-forest-labs/flux-1.1-pro": (40, "async"),
    "xai/grok-imagine-image": (20, "async"),
    "fal-ai/bytedance/seedream/v4.5": (40, "async"),
    "bytedance/seedream-4": (30, "async"),
    "runwayml/gen4-image": (80, "async"),
    "stability-ai/sdxl": (5, "async"),
}


@pytest.fixture
def catalog() -> Catalog:
    return Catalog.load()


def test_shipped_catalog_matches_the_reference_table(catalog: Catalog) -> None:
    assert {m.name: (m.price, m.mode) for m in catalog.models} == REFERENCE


def test_only_listed_options_are_sent(catalog: Catalog) -> None:
    prepared = catalog.prepare("gemini-3-pro-image-preview", 3, {"aspect_ratio": "16:9", "size": "4K"})
    assert prepared.params == {"aspect_ratio": "16:9", "image_size": "4K", "number_of_images": 3}
    assert prepared.total_price == 3 * 145
    openai = catalog.prepare("gpt-image-1", 1, {"size": "1536x1024", "quality": "high", "background": "transparent"})
    assert openai.params == {"size": "1536x1024", "quality": "high", "background": "transparent"}
    assert catalog.prepare("stability-ai/sdxl", 1, {}).params == {}


def test_option_a_model_does_not_take_is_refused(catalog: Catalog) -> None:
    with pytest.raises(UnsupportedOptionError) as refused:
        catalog.prepare("gpt-image-1", 1, {"aspect_ratio": "1:1"})
    assert refused.value.params == {"option": "aspect_ratio", "model": "gpt-image-1"}
    with pytest.raises(UnsupportedOptionError):
        catalog.prepare("stability-ai/sdxl", 1, {"size": "1K"})


def test_value_outside_the_model_choices_is_refused(catalog: Catalog) -> None:
    with pytest.raises(InvalidOptionError) as refused:
        catalog.prepare("runwayml/gen4-image", 1, {"size": "4K"})
    assert refused.value.params["allowed"] == "720p, 1080p"


def test_count_is_bounded_by_the_model(catalog: Catalog) -> None:
    with pytest.raises(InvalidCountError) as refused:
        catalog.prepare("gemini-2.5-flash-image", 5, {})
    assert refused.value.params["limit"] == 4
    with pytest.raises(InvalidCountError):
        catalog.prepare("xai/grok-imagine-image", 2, {})
    assert "number_of_images" not in catalog.prepare("xai/grok-imagine-image", 1, {}).params


def test_unknown_model(catalog: Catalog) -> None:
    with pytest.raises(UnknownModelError):
        catalog.prepare("dall-e-9", 1, {})


def test_operator_override_file(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(
        json.dumps(
            {
                "aspect_ratios": ["1:1"],
                "models": [{"name": "house-model", "provider": "Us", "price": 3, "mode": "sync", "max_images": 2}],
            }
        )
    )
    catalog = Catalog.load(path)
    assert [m.name for m in catalog.models] == ["house-model"]


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps({"aspect_ratios": [], "models": []}),
        json.dumps({"aspect_ratios": [], "models": [{"name": "x", "provider": "p", "price": -1, "mode": "sync"}]}),
        json.dumps(
            {
                "aspect_ratios": [],
                "models": [
                    {"name": "x", "provider": "p", "price": 1, "mode": "sync", "options": {"colour": {"field": "c"}}}
                ],
            }
        ),
    ],
)
def test_malformed_catalog_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "models.json"
    path.write_text(content)
    with pytest.raises(CatalogError):
        Catalog.load(path)
