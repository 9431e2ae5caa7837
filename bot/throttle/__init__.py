"""Throttles: caps on what the process uses at once, shared by every job (gateway request rate, image
bytes in memory)."""

from bot.throttle.memory import ImageMemoryBudget
from bot.throttle.rate import RequestRateLimiter

__all__ = ["ImageMemoryBudget", "RequestRateLimiter"]
