"""The errors of every call: the base class, the request, the caller, the database, bugs,
and Declined, the base of declines of the ledger's rules (errors/__init__.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar


class CreditsError(Exception):
    """An answer other than success: `reason` names the condition, `metadata` its details."""

    reason: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        return self.message


# --- the request ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(CreditsError):
    """A field breaks its rule (metadata `field` names the first, a google.rpc.BadRequest
    every one); nothing was done."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations),
                         {"field": violations[0].field})
        self.violations = list(violations)


class MalformedRequest(CreditsError):
    """The request's bytes are not a valid message of its type (metadata `messageType`);
    nothing was done."""

    reason = "MALFORMED_REQUEST"

    def __init__(self, message_type: str) -> None:
        super().__init__(f"the request is not a valid {message_type} message",
                         {"messageType": message_type})


class InvalidPageToken(CreditsError):
    """A page token this service did not make, or made for another account or other
    filters (metadata `field`)."""

    reason = "INVALID_PAGE_TOKEN"

    def __init__(self) -> None:
        super().__init__(
            "page_token is malformed or does not match this account and these filters",
            {"field": "page_token"},
        )


class ExpireTimePassed(CreditsError):
    """A Grant's `expire_time` is not after now, database clock (metadata `field`,
    `expireTime`); nothing was written and the key stays unused."""

    reason = "EXPIRE_TIME_PASSED"

    def __init__(self, expire_time: str) -> None:
        super().__init__(
            f"expire_time {expire_time} is not in the future",
            {"field": "expire_time", "expireTime": expire_time},
        )


# --- the caller -------------------------------------------------------------------------


class Unauthenticated(CreditsError):
    """No, a malformed or an unknown bearer token; checked before the request is read."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(CreditsError):
    """The principal's role may not call this RPC, or not with this request (a billing
    principal grants PURCHASE credits only) (metadata `principal`, `role`, `method`)."""

    reason = "PERMISSION_DENIED"

    def __init__(self, principal: str, role: str, method: str, what: str = "") -> None:
        super().__init__(f"{role} principal {principal!r} may not call {method}{what}",
                         {"principal": principal, "role": role, "method": method})


class RateLimited(CreditsError):
    """The principal is over its rate limit, each batch item counting one (metadata
    `retryAfterMs`)."""

    reason = "RATE_LIMITED"

    def __init__(self, principal: str, retry_after_s: float) -> None:
        retry_after_ms = max(1, round(retry_after_s * 1000))
        super().__init__(
            f"principal {principal!r} is over its rate limit; retry in {retry_after_ms} ms",
            {"principal": principal, "retryAfterMs": str(retry_after_ms)},
        )


class ShuttingDown(CreditsError):
    """The server is draining (SIGTERM); nothing was done: retry, elsewhere."""

    reason = "SERVER_SHUTTING_DOWN"

    def __init__(self) -> None:
        super().__init__("the server is shutting down; nothing was done, retry the call")


# --- declines of the ledger's rules -----------------------------------------------------


class Declined(CreditsError):
    """A request the ledger declines; nothing it asked for was applied. Declines of keyed
    calls are stored with the key and replayed (REPLAYABLE), but for those about the account
    itself (`stored` false): once an operator creates, unfreezes it, the same key works."""

    stored: ClassVar[bool] = True

    @classmethod
    def restore(cls, message: str, metadata: Mapping[str, str]) -> Declined:
        """Rebuild a stored decline exactly as it was first raised (idempotent replay)."""
        error = cls.__new__(cls)
        CreditsError.__init__(error, message, metadata)
        return error

    def __eq__(self, other: object) -> bool:
        return (
            type(self) is type(other)
            and isinstance(other, Declined)
            and (self.message, self.metadata) == (other.message, other.metadata)
        )

    def __hash__(self) -> int:
        return hash((type(self), self.message))


class AccountNotFound(Declined):
    """The account does not exist: it was never created by EnsureAccount or Grant, and
    auto_create_accounts is off (metadata `accountId`). Never stored with an idempotency key:
    once the account exists, the same key succeeds."""

    reason = "ACCOUNT_NOT_FOUND"
    stored = False

    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id!r} does not exist", {"accountId": account_id})


class AccountFrozen(Declined):
    """The account is frozen (SetAccountStatus): no new reservations, deductions or transfers
    out until it is active again; commits (for their held amount or more) and releases of its
    reservations, and grants, still work (metadata `accountId`). Not stored with an
    idempotency key."""

    reason = "ACCOUNT_FROZEN"
    stored = False

    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id!r} is frozen", {"accountId": account_id})


class AccountClosed(Declined):
    """The account is closed: nothing changes it any more; reads still answer (metadata
    `accountId`). Not stored with an idempotency key."""

    reason = "ACCOUNT_CLOSED"
    stored = False

    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id!r} is closed", {"accountId": account_id})


# --- the database -----------------------------------------------------------------------


class DatabaseUnavailable(CreditsError):
    """The database could not give a definite answer (unreachable, restarting, out of
    connections): the call may or may not have taken effect. Retry it with the same key."""

    reason = "DATABASE_UNAVAILABLE"


class DatabaseTimeout(DatabaseUnavailable):
    """A statement, lock or connection wait hit its bound, or the call's deadline passed
    first: retry it with the same key."""

    reason = "DATABASE_TIMEOUT"


class DatabaseStatementTimeout(DatabaseTimeout):
    """The database itself ended a statement at its statement or lock timeout: it answered
    and rolled back, nothing is stalled (usually a lock held elsewhere)."""


class ConcurrencyConflict(DatabaseUnavailable):
    """Serialization failures or deadlocks went on past the bounded retry; nothing was
    written: retry it with the same key."""

    reason = "CONCURRENCY_CONFLICT"


# --- bugs -------------------------------------------------------------------------------


class LotsOutOfStep(CreditsError):
    """An account's lots disagree with its balance row: a bug, never a caller's fault. The
    transaction is rolled back and the call fails as INTERNAL."""

    def __init__(self, account_id: str) -> None:
        super().__init__(f"lots of account {account_id!r} disagree with its balance",
                         {"accountId": account_id})
