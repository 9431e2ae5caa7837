"""The server's own AutoMod keyword rules, applied to prompts (Discord does not apply AutoMod to bots)."""

from bot.automod.checker import AutoModChecker, RuleFetcher, RulesUnavailableError
from bot.automod.rules import KeywordRule, parse_rules

__all__ = ["AutoModChecker", "KeywordRule", "RuleFetcher", "RulesUnavailableError", "parse_rules"]
