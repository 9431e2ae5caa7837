"""Domain errors. Each carries a message key from `bot.messages` and the data to fill it.

The core raises these; the Discord adapter renders them through the message catalog. A cog never shows
an exception's `str()` to a member, and no error here ever holds a secret.
"""

from __future__ import annotations

from typing import Any, ClassVar


class BotError(Exception):
    """Base of every error a member or operator may be shown.

    `message_key` names the catalog entry; `params` fill its placeholders. `refund` tells the job code
    whether the hold must be released (always, for the errors below: nobody pays for an image they did
    not get).
    """

    message_key: ClassVar[str] = "error.internal"

    def __init__(self, detail: str = "", **params: Any) -> None:
        super().__init__(detail or self.message_key)
        self.detail = detail
        self.params: dict[str, Any] = params


# --- Requests refused before anything is spent ---------------------------------------------------------


class RequestError(BotError):
    """A request the bot refuses before spending anything."""


class EmptyPromptError(RequestError):
    message_key = "error.prompt_empty"


class PromptTooLongError(RequestError):
    message_key = "error.prompt_too_long"  # params: length, limit


class UnknownModelError(RequestError):
    message_key = "error.unknown_model"  # params: model


class ModelDisabledError(RequestError):
    message_key = "error.model_disabled"  # params: model


class InvalidOptionError(RequestError):
    message_key = "error.invalid_option"  # params: option, value, model, allowed


class UnsupportedOptionError(RequestError):
    message_key = "error.unsupported_option"  # params: option, model


class InvalidCountError(RequestError):
    message_key = "error.invalid_count"  # params: count, model, limit


class DefaultModelDisabledError(RequestError):
    message_key = "error.default_model_disabled"  # params: model


class InsufficientCreditsError(RequestError):
    message_key = "error.insufficient_credits"  # params: needed, available


class BudgetExhaustedError(RequestError):
    message_key = "error.budget_exhausted"  # params: needed, remaining


class ServerCapReachedError(RequestError):
    message_key = "error.server_cap"  # the operator's cap on this server; params: needed, remaining


class BotDailyCapError(RequestError):
    message_key = "error.bot_daily_cap"  # the operator's cap on the whole bot per UTC day


class BotMonthlyCapError(RequestError):
    message_key = "error.bot_monthly_cap"  # the operator's cap on the whole bot per UTC month


class GuildNotApprovedError(RequestError):
    message_key = "error.guild_not_approved"  # GUILD_ACCESS=allowlist and the operator did not approve this server


class GenerationPausedError(RequestError):
    message_key = "error.generation_paused"  # the operator's kill switch


class NotOperatorError(RequestError):
    message_key = "error.not_operator"


class AboveOperatorCapError(RequestError):
    message_key = "error.above_operator_cap"  # params: value, cap (an admin's budget or allowance)


class BlockedPromptError(RequestError):
    message_key = "error.blocked_prompt"


class BlocklistFullError(RequestError):
    message_key = "error.blocklist_full"  # params: limit


class TooManyJobsError(RequestError):
    message_key = "error.too_many_jobs"  # params: limit (MAX_QUEUED_PER_MEMBER)


class ServerQueueFullError(RequestError):
    message_key = "error.server_queue_full"  # params: limit (MAX_QUEUED_PER_GUILD)


class InvalidValueError(RequestError):
    message_key = "error.invalid_value"  # params: option, value, allowed (admin settings)


class InvalidAmountError(RequestError):
    message_key = "error.invalid_amount"  # params: value, limit


class NotAMemberError(RequestError):
    message_key = "error.not_a_member"


class MissingPermissionError(RequestError):
    message_key = "error.missing_permission"  # params: permission


class ShuttingDownError(RequestError):
    message_key = "error.shutting_down"


class NotReadyError(RequestError):
    message_key = "error.not_ready"  # the job service is not dispatching yet (start-up or its retries)


class JobNotFoundError(RequestError):
    message_key = "error.job_not_found"


class NotJobOwnerError(RequestError):
    message_key = "error.not_job_owner"


class ChannelNotAllowedError(RequestError):
    message_key = "error.channel_not_allowed"  # params: channels (mentions of the allowed ones)


class UnknownStyleError(RequestError):
    message_key = "error.unknown_style"  # params: style


class AutoModBlockedError(RequestError):
    message_key = "error.automod_blocked"  # params: rule (the AutoMod rule's name)


# --- Gateway failures: the job fails and its hold is released -------------------------------------------


class GatewayError(BotError):
    """The image gateway did not give us images. `status` is the HTTP status when there was one."""

    message_key = "error.gateway"

    def __init__(self, detail: str = "", *, status: int | None = None, **params: Any) -> None:
        super().__init__(detail, **params)
        self.status = status


class GatewayAuthError(GatewayError):
    message_key = "error.gateway_auth"  # 401: the operator's API key is wrong


class GatewayCreditsExhaustedError(GatewayError):
    message_key = "error.gateway_credits"  # 402: the operator's gateway credits are exhausted


class ModelNotEnabledError(GatewayError):
    message_key = "error.model_not_enabled"  # 403: not enabled for the tenant


class GatewayUnknownModelError(GatewayError):
    message_key = "error.gateway_unknown_model"  # 404


class RequestRejectedError(GatewayError):
    message_key = "error.request_rejected"  # 400/422; params: reason (the gateway's own words, trimmed)


class ContentPolicyError(GatewayError):
    message_key = "error.content_policy"  # the prompt was refused by the provider's safety system


class RateLimitedError(GatewayError):
    message_key = "error.rate_limited"  # 429; params: retry_after (seconds)

    def __init__(self, detail: str = "", *, retry_after: float | None = None, **params: Any) -> None:
        super().__init__(detail, status=429, retry_after=retry_after, **params)
        self.retry_after = retry_after


class UpstreamError(GatewayError):
    message_key = "error.upstream"  # 5xx


class GatewayTimeoutError(GatewayError):
    message_key = "error.timeout"


class GenerationFailedError(GatewayError):
    message_key = "error.generation_failed"  # the async operation ended in failure; params: reason


class MalformedResponseError(GatewayError):
    message_key = "error.malformed"  # not JSON, missing fields, bad base64, not an image


class DownloadError(GatewayError):
    message_key = "error.download"  # a result could not be fetched (404, expired, too large)


class GatewayUnavailableError(GatewayError):
    message_key = "error.gateway_unavailable"  # could not connect at all


class OperationLostError(GatewayError):
    message_key = "error.operation_lost"  # 404 on a poll: the gateway no longer knows the operation


# --- Job life ---------------------------------------------------------------------------------------------


class JobCancelledError(BotError):
    message_key = "error.cancelled"


class InterruptedJobError(BotError):
    message_key = "error.interrupted"  # a sync job cut off by a restart before the gateway answered


class DeliveryError(BotError):
    message_key = "error.delivery"  # the images could not be posted to Discord


class StartupError(Exception):
    """The bot cannot start (token refused, Discord unreachable); the message is one line for the operator."""
