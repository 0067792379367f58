"""Every error the service answers with, each with its stable `reason` (AIP-193).

This is the one module that defines them. Transport maps each class to a gRPC status code in
one table (credits_service/transport/grpc/errors.py) and sends `reason` and `metadata` in a
google.rpc.ErrorInfo; metadata keys are lowerCamel. Storage failures are not errors here: the
service layer turns them into the `Database*` errors below (service/transactions.py).
"""

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


class AccountNotEmpty(CreditsError):
    """An account is closed only once it has no balance and no active reservations (metadata
    `accountId`, `balance`, `reserved`)."""

    reason = "ACCOUNT_NOT_EMPTY"

    def __init__(self, account_id: str, balance: int, reserved: int) -> None:
        super().__init__(
            f"account {account_id!r} still has a balance of {balance} and {reserved} reserved: "
            "release its reservations and bring its balance to 0 before closing it",
            {"accountId": account_id, "balance": str(balance), "reserved": str(reserved)})


class PlanNotFound(CreditsError):
    """No plan of this name is configured (metadata `plan`); docs/accounts.md."""

    reason = "PLAN_NOT_FOUND"

    def __init__(self, plan: str) -> None:
        super().__init__(f"no plan is called {plan!r}", {"plan": plan})


class PlanWithoutAllocation(CreditsError):
    """A subscription is to a plan with a per-period allocation; this plan has none (metadata
    `plan`, and `plansWithAllocation`: those that have one, comma-separated);
    docs/subscriptions.md."""

    reason = "PLAN_WITHOUT_ALLOCATION"

    def __init__(self, plan: str, allocating: Sequence[str]) -> None:
        super().__init__(
            f"plan {plan!r} has no per-period allocation to subscribe to",
            {"plan": plan, "plansWithAllocation": ",".join(allocating)[:500]})


class SubscriptionNotFound(CreditsError):
    """The account has no subscription (for ChangeSubscription and CancelSubscription: no
    ACTIVE one); metadata `accountId`."""

    reason = "SUBSCRIPTION_NOT_FOUND"

    def __init__(self, account_id: str, active: bool = True) -> None:
        super().__init__(
            f"account {account_id!r} has no {'active ' if active else ''}subscription",
            {"accountId": account_id})


class AlreadySubscribed(CreditsError):
    """The account has an ACTIVE subscription already (metadata `accountId`, `plan`): change
    it with ChangeSubscription, or cancel it first."""

    reason = "ALREADY_SUBSCRIBED"

    def __init__(self, account_id: str, plan: str) -> None:
        super().__init__(
            f"account {account_id!r} is subscribed to plan {plan!r} already: use "
            "ChangeSubscription to move it to another plan", {"accountId": account_id,
                                                              "plan": plan})


class SubscriptionPeriodMismatch(CreditsError):
    """A subscription changes only between plans of the same period (metadata `plan`,
    `period`, `currentPeriod`): cancel it and subscribe again to change the period."""

    reason = "SUBSCRIPTION_PERIOD_MISMATCH"

    def __init__(self, plan: str, period: str, current: str) -> None:
        super().__init__(
            f"plan {plan!r} allocates every {period}, the subscription every {current}: cancel "
            "the subscription and subscribe again to change the period",
            {"plan": plan, "period": period, "currentPeriod": current})


class SubscriptionActive(CreditsError):
    """The account's plan is its subscription's (metadata `accountId`, `plan`): ChangePlan
    does not move it; ChangeSubscription does."""

    reason = "SUBSCRIPTION_ACTIVE"

    def __init__(self, account_id: str, plan: str) -> None:
        super().__init__(
            f"account {account_id!r} is subscribed to plan {plan!r}: change its plan with "
            "ChangeSubscription (or cancel the subscription first)",
            {"accountId": account_id, "plan": plan})


class OrganizationNotFound(CreditsError):
    """No organisation has this id (metadata `organizationId`)."""

    reason = "ORGANIZATION_NOT_FOUND"

    def __init__(self, organization_id: str) -> None:
        super().__init__(f"no organization is called {organization_id!r}",
                         {"organizationId": organization_id})


class OrganizationExists(CreditsError):
    """An organisation of this id exists with another pool account (metadata
    `organizationId`, `poolAccountId`: its pool)."""

    reason = "ORGANIZATION_EXISTS"

    def __init__(self, organization_id: str, pool_account_id: str) -> None:
        super().__init__(
            f"organization {organization_id!r} exists, with pool account {pool_account_id!r}",
            {"organizationId": organization_id, "poolAccountId": pool_account_id})


class AccountInOrganization(CreditsError):
    """The account belongs to an organisation already, as a member or as its pool (metadata
    `accountId`, `organizationId`, `role`: member or pool); an account is in one at most."""

    reason = "ACCOUNT_IN_ORGANIZATION"

    def __init__(self, account_id: str, organization_id: str, role: str) -> None:
        super().__init__(
            f"account {account_id!r} is the {role} of organization {organization_id!r}: an "
            "account belongs to one organization at most" if role == "pool" else
            f"account {account_id!r} is a member of organization {organization_id!r}: remove "
            "it there first (an account is a member of one organization at most)",
            {"accountId": account_id, "organizationId": organization_id, "role": role})


class MemberExists(CreditsError):
    """The account is a member of this organisation already, with other caps (metadata
    `accountId`, `organizationId`): change them with SetMemberCaps."""

    reason = "MEMBER_EXISTS"

    def __init__(self, account_id: str, organization_id: str) -> None:
        super().__init__(
            f"account {account_id!r} is a member of organization {organization_id!r} already, "
            "with other caps: use SetMemberCaps", {"accountId": account_id,
                                                   "organizationId": organization_id})


class MemberNotFound(CreditsError):
    """The account is no member of this organisation (metadata `accountId`,
    `organizationId`)."""

    reason = "MEMBER_NOT_FOUND"

    def __init__(self, account_id: str, organization_id: str) -> None:
        super().__init__(
            f"account {account_id!r} is no member of organization {organization_id!r}",
            {"accountId": account_id, "organizationId": organization_id})


class MemberHasHolds(CreditsError):
    """A member is removed once its holds on the pool have ended (metadata `accountId`,
    `held`)."""

    reason = "MEMBER_HAS_HOLDS"

    def __init__(self, account_id: str, held: int) -> None:
        super().__init__(
            f"member {account_id!r} holds {held} credits of the pool: commit or release its "
            "reservations first", {"accountId": account_id, "held": str(held)})


class OrganizationFull(CreditsError):
    """An organisation has at most `membersMax` members (metadata `organizationId`,
    `membersMax`)."""

    reason = "ORGANIZATION_FULL"

    def __init__(self, organization_id: str, members_max: int) -> None:
        super().__init__(
            f"organization {organization_id!r} has {members_max} members, the most it may",
            {"organizationId": organization_id, "membersMax": str(members_max)})


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
