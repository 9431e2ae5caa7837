"""Charts admins see: the usage of this period, drawn off the event loop."""

from bot.charts.usage import DailySpend, daily_spend, render_usage_chart, render_usage_chart_async

__all__ = ["DailySpend", "daily_spend", "render_usage_chart", "render_usage_chart_async"]
