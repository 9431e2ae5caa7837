"""Outbound connections the bot makes on the gateway's say-so (result downloads): only to the public internet."""

from bot.net.addresses import refusal_reason
from bot.net.guard import GuardedResolver, RefusedAddressError, guarded_session, refusal_of

__all__ = ["GuardedResolver", "RefusedAddressError", "guarded_session", "refusal_of", "refusal_reason"]
