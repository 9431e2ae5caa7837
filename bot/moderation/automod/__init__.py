"""The server's own AutoMod keyword rules, applied to prompts (Discord does not apply AutoMod to bots)."""

from bot.moderation.automod.checker import AutoModChecker, RuleFetcher, RulesUnavailableError
from bot.moderation.automod.rules import KeywordRule, parse_rules

__all__ = ["AutoModChecker", "KeywordRule", "RuleFetcher", "RulesUnavailableError", "parse_rules"]
