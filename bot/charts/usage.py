"""The /usage server chart: spend per day of the period, stacked by model, with the budget line.

matplotlib draws with its Agg backend (no display) in a worker thread: a chart takes tens of
milliseconds of CPU, which must not stall the event loop. pyplot's global state is not thread-safe,
so the figure is built with the object API only (a Figure on its own Agg canvas, never pyplot).
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from bot.store.records import EntryKind, LedgerEntry

log = logging.getLogger(__name__)

MAX_DAYS = 31


@dataclass(frozen=True)
class DailySpend:
    """Captured credits per local day of a period, per model (each list is parallel to `days`)."""

    days: list[date]
    by_model: dict[str, list[int]] = field(default_factory=dict)
    days_so_far: int | None = None  # how many of `days` have begun (the running total stops there)

    @property
    def total(self) -> int:
        return sum(sum(values) for values in self.by_model.values())


def daily_spend(
    entries: Iterable[LedgerEntry], timezone: str, start: float, end: float, *, now: float | None = None
) -> DailySpend:
    """Group the captures among `entries` by local day (in `timezone`) from `start` to `end`, and by model.

    With `now`, the days after today are known to be still to come."""
    zone = ZoneInfo(timezone)
    first = datetime.fromtimestamp(start, zone).date()
    last = datetime.fromtimestamp(max(start, end - 1e-6), zone).date()
    days = [first + timedelta(days=i) for i in range(min(MAX_DAYS, (last - first).days + 1))]
    index = {day: i for i, day in enumerate(days)}
    by_model: dict[str, list[int]] = {}
    for entry in entries:
        if entry.kind != EntryKind.CAPTURE or not start <= entry.created_at < end:
            continue
        day = datetime.fromtimestamp(entry.created_at, zone).date()
        if day not in index:
            continue
        series = by_model.setdefault(entry.model or "?", [0] * len(days))
        series[index[day]] += entry.amount
    so_far = None
    if now is not None:
        today = datetime.fromtimestamp(now, zone).date()
        so_far = sum(1 for day in days if day <= today)
    return DailySpend(days, dict(sorted(by_model.items())), so_far)


@dataclass(frozen=True)
class ChartLabels:
    """The chart's words, in the reader's language (from the message catalog)."""

    title: str
    per_day: str
    this_period: str
    total: str
    budget: str  # with the amount already in it


# Latin text in the default font; any glyph it lacks (Hangul) from NanumGothic, per character.
FONT_FAMILIES = ["DejaVu Sans", "NanumGothic"]
_fonts_lock = threading.Lock()
_fonts_added = False


def _add_fonts() -> None:
    """Register NanumGothic with matplotlib once. The font ships in the koreanize-matplotlib wheel; its
    package is not imported (importing it rewrites matplotlib's global settings), only its file is read."""
    global _fonts_added
    with _fonts_lock:
        if _fonts_added:
            return
        from matplotlib import font_manager

        spec = importlib.util.find_spec("koreanize_matplotlib")
        for folder in (spec.submodule_search_locations or []) if spec is not None else []:
            path = Path(folder) / "fonts" / "NanumGothic.ttf"
            if path.is_file():
                font_manager.fontManager.addfont(str(path))
                break
        else:
            log.warning("NanumGothic not found: Korean chart labels will show as boxes")
        _fonts_added = True


def render_usage_chart(spend: DailySpend, *, budget: int | None, labels: ChartLabels) -> bytes:
    """A PNG: stacked bars per day and model (left axis), the running total and the budget (right axis)."""
    # Imported here: matplotlib takes a moment to load, and only this chart needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    _add_fonts()
    legend_font = FontProperties(family=FONT_FAMILIES, size=7)

    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    day_labels = [day.strftime("%m-%d") for day in spend.days]
    positions = list(range(len(spend.days)))
    bottom = [0] * len(spend.days)
    for model, values in spend.by_model.items():
        axes.bar(positions, values, bottom=bottom, label=model, width=0.8)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set_xticks(positions, day_labels, rotation=60, fontsize=7)
    axes.set_ylabel(labels.per_day, fontfamily=FONT_FAMILIES)
    axes.set_title(labels.title, fontfamily=FONT_FAMILIES)
    running = axes.twinx()
    cumulative: list[int] = []
    for value in bottom:
        cumulative.append((cumulative[-1] if cumulative else 0) + value)
    shown = len(cumulative) if spend.days_so_far is None else spend.days_so_far
    running.plot(positions[:shown], cumulative[:shown], color="black", linewidth=1.5, label=labels.total)
    if budget is not None:
        running.axhline(budget, color="red", linestyle="--", linewidth=1.5, label=labels.budget)
    running.set_ylim(bottom=0, top=max([budget or 0, *cumulative, 1]) * 1.1)
    running.set_ylabel(labels.this_period, fontfamily=FONT_FAMILIES)
    handles, names = axes.get_legend_handles_labels()
    more_handles, more_names = running.get_legend_handles_labels()
    if handles or more_handles:
        # Below the plot, where it cannot cover a bar.
        axes.legend(
            handles + more_handles,
            names + more_names,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2),
            ncol=4,
            prop=legend_font,
            frameon=False,
        )
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


async def render_usage_chart_async(spend: DailySpend, *, budget: int | None, labels: ChartLabels) -> bytes:
    """`render_usage_chart` in a worker thread."""
    return await asyncio.to_thread(render_usage_chart, spend, budget=budget, labels=labels)
