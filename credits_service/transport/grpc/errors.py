"""The one table from errors to gRPC status codes, and the rich status each error becomes.

Every error carries a google.rpc.ErrorInfo (domain "credits.v1", its stable UPPER_SNAKE
reason, lowerCamel metadata); validation errors also carry a google.rpc.BadRequest. Anything
not in the table is a bug: INTERNAL, with nothing of the exception told to the caller.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from credits.v1 import credits_pb2 as pb
from credits_service.domain import errors

ERROR_DOMAIN = "credits.v1"
INTERNAL_REASON = "INTERNAL"

STATUS_CODES: dict[type[errors.CreditsError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.MalformedRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidPageToken: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ExpireTimePassed: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    errors.AccountNotFound: grpc.StatusCode.NOT_FOUND,
    errors.PlanNotFound: grpc.StatusCode.NOT_FOUND,
    errors.PlanWithoutAllocation: grpc.StatusCode.FAILED_PRECONDITION,
    errors.SubscriptionNotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadySubscribed: grpc.StatusCode.ALREADY_EXISTS,
    errors.SubscriptionPeriodMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    errors.SubscriptionActive: grpc.StatusCode.FAILED_PRECONDITION,
    errors.OrganizationNotFound: grpc.StatusCode.NOT_FOUND,
    errors.OrganizationExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.AccountInOrganization: grpc.StatusCode.FAILED_PRECONDITION,
    errors.MemberExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.MemberNotFound: grpc.StatusCode.NOT_FOUND,
    errors.MemberHasHolds: grpc.StatusCode.FAILED_PRECONDITION,
    errors.OrganizationFull: grpc.StatusCode.FAILED_PRECONDITION,
    errors.UnknownFeature: grpc.StatusCode.INVALID_ARGUMENT,
    errors.CostTooLarge: grpc.StatusCode.INVALID_ARGUMENT,
    errors.SummaryTooLarge: grpc.StatusCode.INVALID_ARGUMENT,
    errors.RateCardRefused: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AccountFrozen: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AccountClosed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AccountNotEmpty: grpc.StatusCode.FAILED_PRECONDITION,
    errors.BalanceMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    errors.EntryNotFound: grpc.StatusCode.NOT_FOUND,
    errors.ReservationNotCommitted: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RefundExceedsUsage: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ReservationNotFound: grpc.StatusCode.NOT_FOUND,
    errors.InsufficientCredits: grpc.StatusCode.FAILED_PRECONDITION,
    errors.MemberCapExceeded: grpc.StatusCode.FAILED_PRECONDITION,
    errors.BalanceLimitExceeded: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ReservationExpired: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ReservationReleased: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ReservationNotPriced: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ReservationAlreadyCommitted: grpc.StatusCode.FAILED_PRECONDITION,
    errors.IdempotencyKeyReused: grpc.StatusCode.ALREADY_EXISTS,
    errors.DatabaseUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DatabaseTimeout: grpc.StatusCode.UNAVAILABLE,
    errors.ConcurrencyConflict: grpc.StatusCode.ABORTED,
    errors.CursorExpired: grpc.StatusCode.OUT_OF_RANGE,
    errors.WatchersExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ConsumerStalled: grpc.StatusCode.UNAVAILABLE,
    errors.DeadLetterNotFound: grpc.StatusCode.NOT_FOUND,
    errors.WebhookEndpointNotConfigured: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DeliveryRefused: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_code_of(exc: BaseException) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def reason_of(exc: BaseException) -> str:
    """The ErrorInfo reason a caller gets for `exc`."""
    if status_code_of(exc) is grpc.StatusCode.INTERNAL:
        return INTERNAL_REASON
    return exc.reason if isinstance(exc, errors.CreditsError) else INTERNAL_REASON


def to_status(exc: BaseException) -> grpc.Status:
    """The rich gRPC status for an error raised while serving a call."""
    code = status_code_of(exc)
    if code is grpc.StatusCode.INTERNAL or not isinstance(exc, errors.CreditsError):
        return _status(code, "internal error", INTERNAL_REASON, {}, [])
    details: list[Message] = []
    if isinstance(exc, errors.InvalidArgument):
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in exc.violations
        ]))
    return _status(code, exc.message, exc.reason, exc.metadata, details)


def _status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str],
    extra_details: list[Message],
) -> grpc.Status:
    packed = []
    for detail in [error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN,
                                               metadata=metadata), *extra_details]:
        any_message = any_pb2.Any()
        any_message.Pack(detail)
        packed.append(any_message)
    return rpc_status.to_status(
        status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)
    )


def item_error(exc: BaseException) -> pb.ItemError:
    """The error of one batch item: what the same request alone would have failed with."""
    code = status_code_of(exc)
    error = pb.ItemError(code=code.value[0], code_name=code.name, domain=ERROR_DOMAIN)
    if code is grpc.StatusCode.INTERNAL or not isinstance(exc, errors.CreditsError):
        error.message, error.reason = "internal error", INTERNAL_REASON
        return error
    error.message, error.reason = exc.message, exc.reason
    error.metadata.update(exc.metadata)
    if isinstance(exc, errors.InvalidArgument):
        error.field_violations.extend(
            pb.FieldViolation(field=v.field, description=v.description) for v in exc.violations)
    return error
