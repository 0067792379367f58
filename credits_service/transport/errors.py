"""The one table from errors to gRPC status codes, and the rich status each error becomes.

Every error carries a google.rpc.ErrorInfo (domain "credits.v1", a stable UPPER_SNAKE reason,
lowerCamel metadata); validation errors also carry a google.rpc.BadRequest.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from credits.v1 import credits_pb2 as pb
from credits_service.domain import errors
from credits_service.transport.admission import ShuttingDown
from credits_service.transport.auth import PermissionDenied, RateLimited, Unauthenticated
from credits_service.transport.validation import InvalidArgument

ERROR_DOMAIN = "credits.v1"

STATUS_CODES: dict[type[BaseException], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidPageToken: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ExpireTimePassed: grpc.StatusCode.INVALID_ARGUMENT,
    errors.AccountNotFound: grpc.StatusCode.NOT_FOUND,
    errors.ReservationNotFound: grpc.StatusCode.NOT_FOUND,
    errors.InsufficientCredits: grpc.StatusCode.FAILED_PRECONDITION,
    errors.BalanceLimitExceeded: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ReservationExpired: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ReservationReleased: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ReservationAlreadyCommitted: grpc.StatusCode.FAILED_PRECONDITION,
    errors.IdempotencyKeyReused: grpc.StatusCode.ALREADY_EXISTS,
    errors.StorageUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.StorageTimeout: grpc.StatusCode.UNAVAILABLE,
    errors.TransientConflict: grpc.StatusCode.ABORTED,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

INTERNAL_REASON = "INTERNAL"


def status_code_of(exc: BaseException) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def to_status(exc: BaseException) -> grpc.Status:
    """The rich gRPC status for an error raised while serving a call."""
    code = status_code_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        return _status(code, "internal error", INTERNAL_REASON, {})
    details = []
    if isinstance(exc, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in exc.violations
            ]
        )
        metadata = {"field": exc.violations[0].field}
        details.append(bad_request)
    else:
        metadata = dict(getattr(exc, "metadata", {}))
    reason = getattr(exc, "reason", INTERNAL_REASON)
    return _status(code, str(exc), reason, metadata, details)


def _status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str],
    extra_details: list[object] | None = None,
) -> grpc.Status:
    detail_messages = [
        error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata),
        *(extra_details or []),
    ]
    packed = []
    for detail in detail_messages:
        any_message = any_pb2.Any()
        any_message.Pack(detail)
        packed.append(any_message)
    return rpc_status.to_status(
        status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)
    )


def item_error(exc: BaseException) -> pb.ItemError:
    """The error of one batch item: what the same request alone would have failed with."""
    code = status_code_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        return pb.ItemError(code=code.value[0], message="internal error", reason=INTERNAL_REASON,
                            domain=ERROR_DOMAIN)
    violations = []
    if isinstance(exc, InvalidArgument):
        metadata = {"field": exc.violations[0].field}
        violations = [pb.FieldViolation(field=v.field, description=v.description)
                      for v in exc.violations]
    else:
        metadata = dict(getattr(exc, "metadata", {}))
    return pb.ItemError(code=code.value[0], message=str(exc),
                        reason=getattr(exc, "reason", INTERNAL_REASON), domain=ERROR_DOMAIN,
                        metadata=metadata, field_violations=violations)
