"""Domain errors. Each names one condition and carries a stable `reason` and metadata.

The transport layer maps each class to a gRPC status code in one table
(credits_service/transport/errors.py). Metadata keys are lowerCamel (AIP-193).
"""

from __future__ import annotations

from collections.abc import Mapping


class DomainError(Exception):
    """A request that the ledger declines; nothing it asked for was applied."""

    reason: str = "DOMAIN_ERROR"

    def __init__(self, message: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})

    @classmethod
    def restore(cls, message: str, metadata: Mapping[str, str]) -> DomainError:
        """Rebuild a stored decline exactly as it was first raised (idempotent replay)."""
        error = cls.__new__(cls)
        DomainError.__init__(error, message, metadata)
        return error

    def __eq__(self, other: object) -> bool:
        return (
            type(self) is type(other)
            and isinstance(other, DomainError)
            and (self.message, self.metadata) == (other.message, other.metadata)
        )

    def __hash__(self) -> int:
        return hash((type(self), self.message))


class AccountNotFound(DomainError):
    reason = "ACCOUNT_NOT_FOUND"

    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id!r} does not exist", {"accountId": account_id})


class ReservationNotFound(DomainError):
    reason = "RESERVATION_NOT_FOUND"

    def __init__(self, reservation_id: str) -> None:
        super().__init__(
            f"reservation {reservation_id!r} does not exist", {"reservationId": reservation_id}
        )


class InsufficientCredits(DomainError):
    reason = "INSUFFICIENT_CREDITS"

    def __init__(self, account_id: str, available: int, requested: int) -> None:
        super().__init__(
            f"account {account_id!r} has {available} credits available, {requested} requested",
            {"accountId": account_id, "available": str(available), "requested": str(requested)},
        )


class BalanceLimitExceeded(DomainError):
    reason = "BALANCE_LIMIT_EXCEEDED"

    def __init__(self, account_id: str, balance: int, amount: int, balance_max: int) -> None:
        super().__init__(
            f"granting {amount} to account {account_id!r} would take its balance past "
            f"{balance_max}",
            {
                "accountId": account_id,
                "balance": str(balance),
                "requested": str(amount),
                "balanceMax": str(balance_max),
            },
        )


class ExpireTimePassed(DomainError):
    """A grant whose expire_time is not after now (the service clock)."""

    reason = "EXPIRE_TIME_PASSED"

    def __init__(self, expire_time: str) -> None:
        super().__init__(
            f"expire_time {expire_time} is not in the future",
            {"field": "expire_time", "expireTime": expire_time},
        )


class _ReservationStateError(DomainError):
    def __init__(self, reservation_id: str, what: str, extra: Mapping[str, str] | None = None):
        super().__init__(
            f"reservation {reservation_id!r} {what}",
            {"reservationId": reservation_id, **(extra or {})},
        )


class ReservationExpired(_ReservationStateError):
    reason = "RESERVATION_EXPIRED"

    def __init__(self, reservation_id: str) -> None:
        super().__init__(reservation_id, "has expired")


class ReservationReleased(_ReservationStateError):
    reason = "RESERVATION_RELEASED"

    def __init__(self, reservation_id: str) -> None:
        super().__init__(reservation_id, "was released")


class ReservationAlreadyCommitted(_ReservationStateError):
    reason = "RESERVATION_ALREADY_COMMITTED"

    def __init__(self, reservation_id: str, committed_amount: int) -> None:
        super().__init__(
            reservation_id,
            f"was already committed for {committed_amount}",
            {"committedAmount": str(committed_amount)},
        )


class IdempotencyKeyReused(DomainError):
    reason = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self, idempotency_key: str) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} was already used for a different request",
            {"idempotencyKey": idempotency_key},
        )


class InvalidPageToken(DomainError):
    """A page token that is malformed or was made for other filters."""

    reason = "INVALID_PAGE_TOKEN"

    def __init__(self) -> None:
        super().__init__(
            "page_token is malformed or does not match this account and these filters",
            {"field": "page_token"},
        )


# Declines that are stored with an idempotency key and replayed, by reason.
REPLAYABLE_ERRORS: dict[str, type[DomainError]] = {
    cls.reason: cls
    for cls in (
        AccountNotFound,
        InsufficientCredits,
        BalanceLimitExceeded,
    )
}


class StorageError(Exception):
    """The database could not give a definite answer; the operation may be retried."""

    reason: str = "DATABASE_ERROR"


class StorageUnavailable(StorageError):
    """Connection lost, refused, or the database is shutting down or starting."""

    reason = "DATABASE_UNAVAILABLE"


class StorageTimeout(StorageError):
    """A statement, lock or connection wait hit its bound."""

    reason = "DATABASE_TIMEOUT"


class StatementTimedOut(StorageTimeout):
    """The database itself ended a statement at its statement or lock timeout (it answered;
    nothing is stalled): usually a lock held elsewhere."""


class TransientConflict(StorageError):
    """Serialization failure or deadlock: the whole transaction may be run again."""

    reason = "CONCURRENCY_CONFLICT"
