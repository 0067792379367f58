"""The errors of pricing, usage summaries and reservations, and the declines stored with an
idempotency key (errors/__init__.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from credits_service.domain.errors.base import AccountNotFound, CreditsError, Declined


class UnknownFeature(CreditsError):
    """The rate card has no feature of this name (metadata `feature`, and `knownFeatures`:
    the card's feature names, comma-separated, cut at 500 characters); docs/rates.md."""

    reason = "UNKNOWN_FEATURE"
    KNOWN_LENGTH_MAX = 500

    def __init__(self, feature: str, known: Sequence[str]) -> None:
        listed = ",".join(known)
        if len(listed) > self.KNOWN_LENGTH_MAX:
            listed = listed[:self.KNOWN_LENGTH_MAX].rsplit(",", 1)[0] + ",..."
        super().__init__(f"the rate card has no feature {feature!r}",
                         {"feature": feature, "knownFeatures": listed})


class RateCardRefused(CreditsError):
    """A rate card reload found the file unusable: the card in force stays (metadata `file`,
    `problems`: every problem, '; '-separated, cut at 1,000 characters)."""

    reason = "RATE_CARD_REFUSED"
    PROBLEMS_LENGTH_MAX = 1000

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        listed = "; ".join(problems)
        if len(listed) > self.PROBLEMS_LENGTH_MAX:
            listed = listed[:self.PROBLEMS_LENGTH_MAX - 3] + "..."
        card = f"the rate card {source!r}" if source else "the rate card"
        super().__init__(f"{card} was refused, the card in force stays: {listed}",
                         {"file": source, "problems": listed})
        self.problems = list(problems)


class CostTooLarge(CreditsError):
    """A feature's units would cost more than one call may take (metadata `feature`, `units`,
    `cost`, `amountMax`)."""

    reason = "COST_TOO_LARGE"

    def __init__(self, feature: str, units: int, cost: int, amount_max: int) -> None:
        super().__init__(
            f"{units} units of {feature!r} would cost {cost} credits, more than {amount_max}",
            {"feature": feature, "units": str(units), "cost": str(cost),
             "amountMax": str(amount_max)})


class SummaryTooLarge(CreditsError):
    """A usage summary would answer more rows than one response carries (metadata
    `rowsMax`): ask for fewer features, larger buckets or a shorter range."""

    reason = "SUMMARY_TOO_LARGE"

    def __init__(self, rows_max: int) -> None:
        super().__init__(
            f"the summary would answer more than {rows_max} bucket rows: ask for fewer "
            "features, larger buckets or a shorter range", {"rowsMax": str(rows_max)})


class ReservationNotFound(Declined):
    """No reservation has this id (metadata `reservationId`)."""

    reason = "RESERVATION_NOT_FOUND"

    def __init__(self, reservation_id: str) -> None:
        super().__init__(
            f"reservation {reservation_id!r} does not exist", {"reservationId": reservation_id}
        )


class InsufficientCredits(Declined):
    """Available credits do not cover a reservation, or what a Commit takes beyond its
    reservation (metadata `accountId`, `available`, `requested`)."""

    reason = "INSUFFICIENT_CREDITS"

    def __init__(self, account_id: str, available: int, requested: int) -> None:
        super().__init__(
            f"account {account_id!r} has {available} credits available, {requested} requested",
            {"accountId": account_id, "available": str(available), "requested": str(requested)},
        )


class MemberCapExceeded(Declined):
    """A member's hold on its organisation's pool would pass its cap (metadata `accountId`,
    the member; `poolAccountId`; `remaining`, what its caps leave; `requested`)."""

    reason = "MEMBER_CAP_EXCEEDED"

    def __init__(self, account_id: str, pool_account_id: str, remaining: int,
                 requested: int) -> None:
        super().__init__(
            f"member {account_id!r} may draw {remaining} more credits from pool "
            f"{pool_account_id!r}, {requested} requested",
            {"accountId": account_id, "poolAccountId": pool_account_id,
             "remaining": str(remaining), "requested": str(requested)})


class BalanceLimitExceeded(Declined):
    """A Grant would take the balance past 10^15 (metadata `balance`, `requested`,
    `balanceMax`)."""

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


class BalanceMismatch(Declined):
    """Adjust SET was given the balance the caller expected, and the account's balance is
    another: someone changed it meanwhile (metadata `accountId`, `expectedBalance`,
    `balance`). Read it again and decide again."""

    reason = "BALANCE_MISMATCH"

    def __init__(self, account_id: str, expected: int, balance: int) -> None:
        super().__init__(
            f"account {account_id!r} has a balance of {balance}, not the {expected} expected",
            {"accountId": account_id, "expectedBalance": str(expected),
             "balance": str(balance)})


class EntryNotFound(Declined):
    """No USAGE entry has this id (metadata `entryId`)."""

    reason = "ENTRY_NOT_FOUND"

    def __init__(self, entry_id: int) -> None:
        super().__init__(f"no usage entry has id {entry_id}", {"entryId": str(entry_id)})


class ReservationNotCommitted(Declined):
    """Only committed usage is refunded; this reservation is not COMMITTED (metadata
    `reservationId`, `status`)."""

    reason = "RESERVATION_NOT_COMMITTED"

    def __init__(self, reservation_id: str, status: str) -> None:
        super().__init__(
            f"reservation {reservation_id!r} is {status}, not COMMITTED: nothing to refund",
            {"reservationId": reservation_id, "status": status})
        # Still ACTIVE, it may be committed yet: then the same key must be able to refund.
        self.stored = status != "ACTIVE"  # type: ignore[misc]


class RefundExceedsUsage(Declined):
    """Refunds of a reservation never add up to more than it captured (metadata
    `reservationId`, `committedAmount`, `refundedAmount`, `requested`)."""

    reason = "REFUND_EXCEEDS_USAGE"

    def __init__(self, reservation_id: str, committed: int, refunded: int, requested: int) -> None:
        super().__init__(
            f"reservation {reservation_id!r} captured {committed} and {refunded} were refunded "
            f"already: at most {committed - refunded} more, not {requested}",
            {"reservationId": reservation_id, "committedAmount": str(committed),
             "refundedAmount": str(refunded), "requested": str(requested)})


class _ReservationStateError(Declined):
    def __init__(self, reservation_id: str, what: str, extra: Mapping[str, str] | None = None):
        super().__init__(
            f"reservation {reservation_id!r} {what}",
            {"reservationId": reservation_id, **(extra or {})},
        )


class ReservationExpired(_ReservationStateError):
    """Commit, Release or ExtendReservation of a reservation past its `expire_time`
    (metadata `reservationId`)."""

    reason = "RESERVATION_EXPIRED"

    def __init__(self, reservation_id: str) -> None:
        super().__init__(reservation_id, "has expired")


class ReservationReleased(_ReservationStateError):
    """Commit or ExtendReservation of a released reservation (metadata `reservationId`)."""

    reason = "RESERVATION_RELEASED"

    def __init__(self, reservation_id: str) -> None:
        super().__init__(reservation_id, "was released")


class ReservationNotPriced(_ReservationStateError):
    """Commit with units of a reservation of an amount, not of a feature: it has no price to
    charge them at (metadata `reservationId`)."""

    reason = "RESERVATION_NOT_PRICED"

    def __init__(self, reservation_id: str) -> None:
        super().__init__(reservation_id, "was placed for an amount, not a feature's units: "
                                         "commit it with an amount")


class ReservationAlreadyCommitted(_ReservationStateError):
    """Release or ExtendReservation of a committed reservation, or its Commit with another
    amount (metadata `reservationId`, `committedAmount`)."""

    reason = "RESERVATION_ALREADY_COMMITTED"

    def __init__(self, reservation_id: str, committed_amount: int) -> None:
        super().__init__(
            reservation_id,
            f"was already committed for {committed_amount}",
            {"committedAmount": str(committed_amount)},
        )


class IdempotencyKeyReused(Declined):
    """The caller used this key for a different request (metadata `idempotencyKey`);
    nothing was written."""

    reason = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self, idempotency_key: str) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} was already used for a different request",
            {"idempotencyKey": idempotency_key},
        )


# Declines that are stored with an idempotency key and replayed, by reason.
REPLAYABLE: dict[str, type[Declined]] = {
    cls.reason: cls
    for cls in (AccountNotFound, InsufficientCredits, MemberCapExceeded, BalanceLimitExceeded,
                BalanceMismatch,
                ReservationNotFound, EntryNotFound, ReservationNotCommitted, RefundExceedsUsage)
}
