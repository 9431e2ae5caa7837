"""Charts admins see: the usage of this period, drawn off the event loop."""

from bot.charts.usage import ChartLabels, DailySpend, daily_spend, render_usage_chart, render_usage_chart_async

__all__ = ["ChartLabels", "DailySpend", "daily_spend", "render_usage_chart", "render_usage_chart_async"]
