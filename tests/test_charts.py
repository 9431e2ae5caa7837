"""The usage chart draws every label it is given, Korean included, with a font that has the glyphs."""

from __future__ import annotations

import io
import warnings
from datetime import date

from PIL import Image

from bot.charts import ChartLabels, DailySpend, render_usage_chart

KOREAN = ChartLabels(
    title="일별 사용량(2026-12-01 ~ 2026-12-03)",
    per_day="일별 크레딧",
    this_period="이번 기간 누적 크레딧",
    total="누적",
    budget="예산 400",
)


def _spend() -> DailySpend:
    days = [date(2026, 12, 1), date(2026, 12, 2), date(2026, 12, 3)]
    return DailySpend(days, {"gemini-2.5-flash-image": [39, 78, 0], "gpt-image-1": [0, 120, 0]}, 2)


def test_korean_labels_are_drawn_with_a_hangul_font() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = render_usage_chart(_spend(), budget=400, labels=KOREAN)
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert missing == [], "a Korean label fell back to a font without Hangul (drawn as boxes)"
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (800, 450)


def test_the_labels_given_are_the_ones_drawn() -> None:
    english = ChartLabels("Spend per day", "credits per day", "credits this period", "total", "budget 400")
    assert render_usage_chart(_spend(), budget=400, labels=english) != render_usage_chart(
        _spend(), budget=400, labels=KOREAN
    )
