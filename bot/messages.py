"""The one message catalog: every string a member or admin sees comes from here.

Templates use `str.format` placeholders. A locale that lacks a key falls back to English, so a
translation can be added one key at a time (`CATALOG["ko"] = {...}`) without touching the cogs.
"""

from __future__ import annotations

from typing import Any

from bot.errors import BotError

EN: dict[str, str] = {
    # Request refusals
    "error.prompt_empty": "Your prompt is empty. Describe the image you want.",
    "error.prompt_too_long": "Your prompt is {length} characters long; the limit is {limit}.",
    "error.unknown_model": "There is no model called `{model}`. Use `/models` to see the ones you can pick.",
    "error.model_disabled": "The model `{model}` is not allowed on this server.",
    "error.default_model_disabled": (
        "`{model}` is the model /imagine uses when none is picked here. Choose another default with "
        "`/models default` first."
    ),
    "error.export_too_large": "That export is too large to upload ({size} bytes). Choose a shorter date range.",
    "error.invalid_option": "`{value}` is not a valid {option} for `{model}`. Choose one of: {allowed}.",
    "error.unsupported_option": "`{model}` does not take the option {option}. Leave it out.",
    "error.invalid_count": "`{model}` makes 1 to {limit} images per request; you asked for {count}.",
    "error.insufficient_credits": "This needs {needed} credits and you have {available} available.",
    "error.budget_exhausted": (
        "This server has reached its image budget for now ({remaining} credits left, {needed} needed)."
    ),
    "error.blocked_prompt": "Your prompt contains words this server does not allow. Nothing was charged.",
    "error.too_many_jobs": "You already have {limit} images waiting. Wait for one to finish.",
    "error.invalid_value": "`{value}` is not a valid {option}: use {allowed}.",
    "error.invalid_amount": "`{value}` is not a valid amount: use a whole number from 0 to {limit}.",
    "error.not_a_member": "That user is not a member of this server.",
    "error.missing_permission": "You need the {permission} permission to do that.",
    "error.shutting_down": "The bot is restarting. Try again in a minute; nothing was charged.",
    "error.job_not_found": "That image job no longer exists.",
    "error.not_job_owner": "Only the member who asked for this, or a server admin, can do that.",
    "error.guild_only": "This command works only in a server.",
    "error.internal": "Something went wrong on our side. Nothing was charged.",
    # Gateway failures (the hold is always released)
    "error.gateway": "The image service failed. Your credits were refunded.",
    "error.gateway_auth": (
        "The bot's image service key was rejected. Tell the bot's operator. Your credits were refunded."
    ),
    "error.gateway_credits": (
        "The bot operator's image service credits are used up. Tell the bot's operator. Your credits were refunded."
    ),
    "error.model_not_enabled": (
        "The model `{model}` is not enabled for this bot's image service account. "
        "Pick another model with `/models`. Your credits were refunded."
    ),
    "error.gateway_unknown_model": ("The image service does not know the model `{model}`. Your credits were refunded."),
    "error.request_rejected": "The image service rejected the request: {reason}. Your credits were refunded.",
    "error.content_policy": (
        "The image provider refused this prompt under its content policy. "
        "Try wording it differently. Your credits were refunded."
    ),
    "error.rate_limited": "The image service is busy right now. Try again shortly. Your credits were refunded.",
    "error.upstream": "The image provider had an error. Try again later. Your credits were refunded.",
    "error.timeout": "The image service took too long to answer. Your credits were refunded.",
    "error.generation_failed": "The image provider could not make this image: {reason}. Your credits were refunded.",
    "error.malformed": "The image service sent back something that is not an image. Your credits were refunded.",
    "error.download": "The finished image could not be downloaded. Your credits were refunded.",
    "error.gateway_unavailable": "The image service cannot be reached right now. Your credits were refunded.",
    "error.cancelled": "Cancelled. Your credits were refunded.",
    "error.interrupted": "The bot restarted before this image came back. Your credits were refunded.",
    "error.delivery": "The images could not be posted here. Your credits were refunded.",
    # Progress and results
    "status.queued": "Queued: position {position}",
    "status.submitting": "Sending your request…",
    "status.generating": "Generating… {elapsed}s",
    "status.downloading": "Downloading {count} image(s)…",
    "status.done": "Done",
    "status.failed": "Failed",
    "status.cancelled": "Cancelled",
    "embed.title": "Imagine",
    "embed.prompt": "Prompt",
    "embed.model": "Model",
    "embed.price": "Price",
    "embed.status": "Status",
    "embed.options": "Options",
    "embed.price_value": "{total} credits ({count} × {price})",
    "embed.charged": "Charged {charged} credits · {available} left",
    "embed.partial": "{delivered} of {requested} images arrived; you were charged only for those.",
    # Models and credits
    "models.title": "Image models",
    "models.line": "`{name}` · {provider} · {price} credits/image · {mode} · options: {options}",
    "models.no_options": "none",
    "models.sync": "instant",
    "models.async": "queued",
    "models.disabled": "(disabled here)",
    "models.default": "(default)",
    "autocomplete.model": "{name} · {price} credits/image",
    "credits.title": "Your credits",
    "credits.available": "Available",
    "credits.held": "Held for running jobs",
    "credits.allowance": "Allowance",
    "credits.allowance_value": "{amount} per {period}",
    "credits.unlimited": "unlimited",
    "credits.resets": "Resets",
    "credits.never": "never",
    "credits.recent": "Recent jobs",
    "credits.no_jobs": "No images yet. Try `/imagine`.",
    "credits.job_line": "{when} · `{model}` · {count} image(s) · {status} · {charged} credits",
    # Buttons and quotes
    "button.cancel": "Cancel",
    "button.reroll": "Re-roll",
    "button.delete": "Delete",
    "button.confirm": "Confirm",
    "quote.text": (
        "This costs **{total} credits** ({count} × {price} for `{model}`). "
        "You will have {after} credits left. Go ahead?"
    ),
    "quote.confirmed": "Confirmed.",
    "quote.cancelled": "Cancelled. Nothing was charged.",
    "quote.expired": "This quote expired. Run `/imagine` again.",
    # Admin
    "admin.not_set": "not set",
    "admin.default_set": "Every member's default allowance is now {allowance}.",
    "admin.member_set": "{member}'s own allowance: {allowance}.",
    "admin.role_set": "Allowance for {role}: {allowance}.",
    "admin.granted": "Granted {amount} credits to {member} for this period.",
    "admin.deducted": "Deducted {amount} credits from {member} for this period.",
    "admin.spent": "Spent this period",
    "admin.granted_total": "Granted this period",
    "admin.budget_set": "Server budget: {budget}.",
    "admin.budget_show": "Budget: {budget} · spent {spent} · remaining {remaining} · resets {resets}",
    "admin.usage_title": "Spent this period: {total} credits",
    "admin.usage_since": "Since {since} · resets {resets}",
    "admin.by_model": "By model",
    "admin.top_members": "Top members",
    "admin.member_usage": "{member} spent {total} credits since {since}.",
    "admin.exported": "The ledger: {rows} entries.",
    "admin.audit_empty": "No admin changes yet.",
    "admin.timezone_set": "Periods now reset at midnight in {timezone}.",
    "admin.quote_set": "Requests above {threshold} credits now ask for confirmation (0: never).",
    "admin.blocked_added": "Blocked term #{id}: `{pattern}`.",
    "admin.blocked_removed": "Removed blocked term #{id}.",
    "admin.blocked_missing": "There is no blocked term #{id}.",
    "admin.blocked_empty": "No blocked terms.",
    "admin.default_model": "The default model is now `{model}`.",
    "admin.model_enabled": "`{model}` is allowed on this server.",
    "admin.model_disabled": "`{model}` is refused on this server.",
    "job.already_finished": "This job has already finished.",
    # Issue 13: remix, details, saved defaults, styles, channel rules, spoilers, AutoMod, usage chart, waiting
    "error.channel_not_allowed": "Images can be made here only in: {channels}. Nothing was charged.",
    "error.unknown_style": "There is no style called `{style}` on this server. See `/styles list`.",
    "error.automod_blocked": ("Your prompt matches this server's AutoMod rule “{rule}”. Nothing was charged."),
    "status.queued_eta": "Queued: position {position} · starts about {starts}",
    "status.generating_eta": "Generating… {elapsed}s · done about {ends}",
    "embed.style": "Style",
    "embed.remix_of": "Remixed from",
    "button.remix": "Remix",
    "button.details": "Details",
    "remix.title": "Remix",
    "remix.prompt": "Prompt",
    "remix.model": "Model",
    "remix.options": "Options (name=value, one per line)",
    "remix.bad_options": "`{line}` is not an option line: write name=value, e.g. aspect_ratio=16:9.",
    "details.title": "Job details",
    "details.prompt": "Prompt",
    "details.sent_prompt": "Prompt sent (with the style)",
    "details.model": "Model",
    "details.options": "Options",
    "details.count": "Images",
    "details.count_value": "{delivered} of {count} delivered",
    "details.charged": "Credits charged",
    "details.charged_value": "{charged} of {held} held ({price} per image)",
    "details.asked_by": "Asked by",
    "details.when": "When",
    "details.took": "Took",
    "details.took_value": "{seconds:.1f} s",
    "details.status": "Status",
    "details.style": "Style",
    "details.remix_of": "Remixed from",
    "details.job_id": "Job id",
    "details.none": "none",
    "settings.saved": "Saved. `/imagine` now uses, for what you leave out: {defaults}",
    "settings.show": "Your saved defaults: {defaults}",
    "settings.empty": "You have no saved defaults. Save some with `/settings save`.",
    "settings.reset": "Your saved defaults are forgotten.",
    "styles.added": "Style `{name}`: {template}",
    "styles.removed": "Removed the style `{name}`.",
    "styles.missing": "There is no style called `{name}`.",
    "styles.empty": "No styles yet. Admins add them with `/styles add`.",
    "styles.line": "`{name}` · {template}",
    "channels.added": "{channel} is now one of the channels where images can be made.",
    "channels.removed": "{channel} is no longer on the list.",
    "channels.unchanged": "Nothing changed: {channel} was already like that.",
    "channels.list": "Images can be made only in: {channels}",
    "channels.everywhere": "Images can be made in every channel (no channel chosen).",
    "spoilers.set": "Results are posted as spoilers: {mode}.",
    "spoilers.off": "only when the member asks",
    "spoilers.all": "always",
    "spoilers.outside_nsfw": "outside age-restricted channels",
    "server.show": (
        "Time zone: {timezone}\nQuote above: {quote} credits\nChannels: {channels}\n"
        "Spoilers: {spoilers}\nAutoMod keyword rules: {automod}"
    ),
    "automod.active": "applied to prompts ({count} keyword rule(s))",
    "automod.no_permission": "not applied: the bot needs the Manage Server permission to read them",
    "usage.chart_title": "Spend per day, {since} to {until}",
}

CATALOG: dict[str, dict[str, str]] = {"en": EN}
DEFAULT_LOCALE = "en"


def _language(locale: str | None) -> str:
    """Map a Discord locale such as `en-US` or `ko` to a catalog language."""
    if not locale:
        return DEFAULT_LOCALE
    return locale.split("-")[0].lower()


def text(key: str, locale: str | None = None, /, **params: Any) -> str:
    """Render catalog entry `key` in `locale` (falling back to English) with `params`."""
    template = CATALOG.get(_language(locale), EN).get(key) or EN.get(key)
    if template is None:
        raise KeyError(f"no message {key!r} in the catalog")
    try:
        return template.format(**params)
    except (KeyError, IndexError, ValueError):
        # A missing parameter must never turn a refusal into a crash; show the template's words.
        return template


def error_text(error: BotError, locale: str | None = None) -> str:
    """The member-facing sentence for a domain error."""
    return text(error.message_key, locale, **error.params)
