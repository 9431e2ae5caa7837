"""Honest waiting times: when a queued job should start, from the models' learned durations."""

from bot.jobs.waiting.estimate import estimate_starts

__all__ = ["estimate_starts"]
