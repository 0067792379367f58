"""The errors of the events stream and webhooks (errors/__init__.py)."""

from __future__ import annotations

from credits_service.domain.errors.base import CreditsError, Declined


class CursorExpired(CreditsError):
    """The cursor points before the oldest event kept: the events after it were purged
    (metadata `oldestCursor`: where the stream can resume, knowing some events are gone)."""

    reason = "CURSOR_EXPIRED"

    def __init__(self, oldest_cursor: str) -> None:
        super().__init__(
            "the cursor is older than the oldest event kept (events_retention_s): events after "
            "it were purged; resume from oldestCursor, or from now, knowing some were missed",
            {"oldestCursor": oldest_cursor})


class WatchersExhausted(CreditsError):
    """As many event streams as the server allows are open (metadata `watchersMax`)."""

    reason = "WATCHERS_EXHAUSTED"

    def __init__(self, watchers_max: int) -> None:
        super().__init__(
            f"the server already serves {watchers_max} event streams (events_watchers_max); "
            "retry later, or share one stream", {"watchersMax": str(watchers_max)})


class ConsumerStalled(CreditsError):
    """The consumer read nothing for the stall limit: the stream ends so it holds nothing
    (metadata `stallLimitS`); reconnect with the last cursor handled."""

    reason = "CONSUMER_STALLED"

    def __init__(self, stall_limit_s: float) -> None:
        super().__init__(
            f"the stream ended: the consumer read nothing for {stall_limit_s:g} s "
            "(events_stall_limit_s); reconnect with the last cursor handled",
            {"stallLimitS": f"{stall_limit_s:g}"})


class DeadLetterNotFound(Declined):
    """No dead letter has this id (metadata `deadLetterId`)."""

    reason = "DEAD_LETTER_NOT_FOUND"

    def __init__(self, dead_letter_id: int) -> None:
        super().__init__(f"no dead letter {dead_letter_id}",
                         {"deadLetterId": str(dead_letter_id)})


class WebhookEndpointNotConfigured(CreditsError):
    """The dead letter's endpoint is not in the webhooks file now (metadata `endpoint`)."""

    reason = "WEBHOOK_ENDPOINT_NOT_CONFIGURED"

    def __init__(self, endpoint: str) -> None:
        super().__init__(f"the endpoint {endpoint!r} is not configured (--webhooks-file): "
                         "nowhere to redeliver to", {"endpoint": endpoint})


class DeliveryRefused(CreditsError):
    """The endpoint did not take the redelivery (metadata `endpoint`, `error`); the dead
    letter stays, its attempts counted."""

    reason = "WEBHOOK_DELIVERY_FAILED"

    def __init__(self, endpoint: str, error: str) -> None:
        super().__init__(f"the endpoint {endpoint!r} did not take it: {error}",
                         {"endpoint": endpoint, "error": error[:256]})
