"""Typed errors: every failure of a call is a CreditsError, the subclass chosen by the
ErrorInfo reason the server sent (docs/api.md's table), with its metadata as attributes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

DOMAIN = "credits.v1"


class CreditsError(Exception):
    """A call failed: `code` (a grpc.StatusCode), `reason` (the stable ErrorInfo reason, or
    the code's name when the server sent none), `metadata`, and for INVALID_ARGUMENT the
    `field_violations` (field, description)."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str,
                 metadata: Mapping[str, str] | None = None,
                 field_violations: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
        self.field_violations = field_violations

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class InvalidArgument(CreditsError):
    """The request breaks a rule (`field_violations` says which); nothing was done."""


class Unauthenticated(CreditsError):
    """No token, or one the server does not know."""


class PermissionDenied(CreditsError):
    """The token's role may not make this call."""


class RateLimited(CreditsError):
    """Over the principal's rate limit; `retry_after_s` says when to try again."""

    @property
    def retry_after_s(self) -> float:
        return int(self.metadata.get("retryAfterMs", "0")) / 1000


class Unavailable(CreditsError):
    """The service could not be reached or could not answer (after the client's retries);
    whether the call took effect is unknown, and a retry with the same key is safe."""


class DeadlineExceeded(CreditsError):
    """The call's deadline passed (after the client's retries); as Unavailable."""


class AccountNotFound(CreditsError):
    """No such account (and the server does not create it on first use)."""


class AccountFrozen(CreditsError):
    """The account is frozen: no new holds or grants."""


class AccountClosed(CreditsError):
    """The account is closed."""


class InsufficientCredits(CreditsError):
    """The account's available credits do not cover the request: `available` and `needed`."""

    @property
    def account_id(self) -> str:
        return self.metadata.get("accountId", "")

    @property
    def available(self) -> int:
        return int(self.metadata.get("available", "0"))

    @property
    def needed(self) -> int:
        return int(self.metadata.get("requested", "0"))


class MemberCapExceeded(CreditsError):
    """An organisation member's hold on the pool would pass its cap."""


class IdempotencyKeyReused(CreditsError):
    """The idempotency key was used before with a different request."""


class ReservationNotFound(CreditsError):
    """No reservation has this id."""


class ReservationExpired(CreditsError):
    """The reservation expired before it was committed: its credits went back."""


class ReservationReleased(CreditsError):
    """The reservation was released."""


class ReservationAlreadyCommitted(CreditsError):
    """The reservation was committed with another amount."""


class UnknownFeature(CreditsError):
    """The rate card has no such feature."""


class InvalidPageToken(InvalidArgument):
    """The page token is not one this listing gave (or is of another query)."""


class ExpireTimePassed(InvalidArgument):
    """The grant's expire_time is already past."""


class CostTooLarge(InvalidArgument):
    """What the units cost passes the largest amount a hold may have."""


class SummaryTooLarge(InvalidArgument):
    """The usage summary would pass its row bound: a shorter range or larger buckets."""


class ConcurrencyConflict(CreditsError):
    """The server gave up on a write that kept conflicting (after the client's retries)."""


class AccountNotEmpty(CreditsError):
    """The account still has a balance or holds (closing it needs `write_off_balance`)."""


class AccountInOrganization(CreditsError):
    """The account is already a member or a pool of an organisation."""


class BalanceLimitExceeded(CreditsError):
    """A grant would take the balance past 10^15."""


class BalanceMismatch(CreditsError):
    """Adjust's `expected_balance` is not the balance: someone changed it meanwhile."""


class EntryNotFound(CreditsError):
    """No ledger entry has this id (or it is not a USAGE entry)."""


class ReservationNotCommitted(CreditsError):
    """The reservation was not committed: there is nothing to refund."""


class ReservationNotPriced(CreditsError):
    """A commit by units of a hold placed by amount, which has no price to apply."""


class RefundExceedsUsage(CreditsError):
    """The refund passes what is left to refund of the usage."""


class PlanNotFound(CreditsError):
    """The plans file has no such plan."""


class PlanWithoutAllocation(CreditsError):
    """The plan grants no credits per period: it cannot be subscribed to."""


class SubscriptionNotFound(CreditsError):
    """The account has no subscription."""


class AlreadySubscribed(CreditsError):
    """The account has an active subscription: change it instead."""


class SubscriptionPeriodMismatch(CreditsError):
    """The plans' allocations run on different periods."""


class SubscriptionActive(CreditsError):
    """The account's plan is held by its active subscription."""


class OrganizationNotFound(CreditsError):
    """No organisation has this id."""


class OrganizationExists(CreditsError):
    """The organisation exists with another pool account."""


class OrganizationFull(CreditsError):
    """The organisation has as many members as it may have."""


class MemberNotFound(CreditsError):
    """The account is no member of this organisation (RemoveMember retried after a lost
    reply says this too: the member is gone either way)."""


class MemberExists(CreditsError):
    """The account is a member already, with other caps."""


class MemberHasHolds(CreditsError):
    """The member still holds credits of the pool."""


class RateCardRefused(CreditsError):
    """The rate card file is broken or missing; the card in force stays."""


class CursorExpired(CreditsError):
    """The events after the cursor were purged; `oldest_cursor` is where the kept events
    start."""

    @property
    def oldest_cursor(self) -> str:
        return self.metadata.get("oldestCursor", "")


class WatchersExhausted(CreditsError):
    """The server streams to as many watchers as it may."""


class ConsumerStalled(Unavailable):
    """The stream was cut off because nothing was read from it for too long."""


class DeadLetterNotFound(CreditsError):
    """No dead letter has this id."""


class WebhookEndpointNotConfigured(CreditsError):
    """The dead letter's endpoint is no longer in the webhooks file."""


class WebhookDeliveryFailed(CreditsError):
    """The endpoint did not take the redelivery (`metadata["error"]`); the dead letter
    stays, its attempts counted."""


_BY_REASON: dict[str, type[CreditsError]] = {
    "INVALID_ARGUMENT": InvalidArgument, "MALFORMED_REQUEST": InvalidArgument,
    "INVALID_PAGE_TOKEN": InvalidPageToken, "EXPIRE_TIME_PASSED": ExpireTimePassed,
    "COST_TOO_LARGE": CostTooLarge, "SUMMARY_TOO_LARGE": SummaryTooLarge,
    "UNAUTHENTICATED": Unauthenticated, "PERMISSION_DENIED": PermissionDenied,
    "RATE_LIMITED": RateLimited, "SERVER_SHUTTING_DOWN": Unavailable,
    "DATABASE_UNAVAILABLE": Unavailable, "DATABASE_TIMEOUT": Unavailable,
    "CONCURRENCY_CONFLICT": ConcurrencyConflict,
    "ACCOUNT_NOT_FOUND": AccountNotFound, "ACCOUNT_FROZEN": AccountFrozen,
    "ACCOUNT_CLOSED": AccountClosed, "ACCOUNT_NOT_EMPTY": AccountNotEmpty,
    "ACCOUNT_IN_ORGANIZATION": AccountInOrganization,
    "INSUFFICIENT_CREDITS": InsufficientCredits, "MEMBER_CAP_EXCEEDED": MemberCapExceeded,
    "BALANCE_LIMIT_EXCEEDED": BalanceLimitExceeded, "BALANCE_MISMATCH": BalanceMismatch,
    "IDEMPOTENCY_KEY_REUSED": IdempotencyKeyReused, "ENTRY_NOT_FOUND": EntryNotFound,
    "RESERVATION_NOT_FOUND": ReservationNotFound, "RESERVATION_EXPIRED": ReservationExpired,
    "RESERVATION_RELEASED": ReservationReleased,
    "RESERVATION_ALREADY_COMMITTED": ReservationAlreadyCommitted,
    "RESERVATION_NOT_COMMITTED": ReservationNotCommitted,
    "RESERVATION_NOT_PRICED": ReservationNotPriced, "REFUND_EXCEEDS_USAGE": RefundExceedsUsage,
    "UNKNOWN_FEATURE": UnknownFeature, "RATE_CARD_REFUSED": RateCardRefused,
    "PLAN_NOT_FOUND": PlanNotFound, "PLAN_WITHOUT_ALLOCATION": PlanWithoutAllocation,
    "SUBSCRIPTION_NOT_FOUND": SubscriptionNotFound, "ALREADY_SUBSCRIBED": AlreadySubscribed,
    "SUBSCRIPTION_PERIOD_MISMATCH": SubscriptionPeriodMismatch,
    "SUBSCRIPTION_ACTIVE": SubscriptionActive,
    "ORGANIZATION_NOT_FOUND": OrganizationNotFound,
    "ORGANIZATION_EXISTS": OrganizationExists, "ORGANIZATION_FULL": OrganizationFull,
    "MEMBER_NOT_FOUND": MemberNotFound, "MEMBER_EXISTS": MemberExists,
    "MEMBER_HAS_HOLDS": MemberHasHolds, "CURSOR_EXPIRED": CursorExpired,
    "WATCHERS_EXHAUSTED": WatchersExhausted, "CONSUMER_STALLED": ConsumerStalled,
    "DEAD_LETTER_NOT_FOUND": DeadLetterNotFound,
    "WEBHOOK_ENDPOINT_NOT_CONFIGURED": WebhookEndpointNotConfigured,
    "WEBHOOK_DELIVERY_FAILED": WebhookDeliveryFailed,
}
_BY_CODE: dict[grpc.StatusCode, type[CreditsError]] = {
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def from_rpc_error(error: grpc.aio.AioRpcError) -> CreditsError:
    """The typed error of a failed call."""
    code = error.code()
    reason, metadata, violations = code.name, {}, ()
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == DOMAIN:
                reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = tuple((v.field, v.description) for v in bad.field_violations)
    return typed(code, reason, error.details() or code.name, metadata, violations)


def typed(code: grpc.StatusCode, reason: str, message: str, metadata: Mapping[str, str],
          violations: tuple[tuple[str, str], ...] = ()) -> CreditsError:
    """The CreditsError subclass of `reason` (or of `code`, without one)."""
    kind = _BY_REASON.get(reason) or _BY_CODE.get(code, CreditsError)
    return kind(code, reason or code.name, message, metadata, violations)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def from_item_error(error: Any) -> CreditsError:
    """The typed error of one batch item (an ItemError message)."""
    return typed(_CODES.get(error.code, grpc.StatusCode.UNKNOWN), error.reason, error.message,
                 dict(error.metadata),
                 tuple((v.field, v.description) for v in error.field_violations))
