"""What calls answer: plain dataclasses, never protobuf messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Balance:
    account_id: str
    balance: int
    reserved: int
    available: int
    active_reservation_count: int = 0
    lifetime_granted: int = 0
    lifetime_used: int = 0
    lifetime_expired: int = 0
    credit_limit: int = 0
    unlimited: bool = False
    debt: int = 0


@dataclass(frozen=True, slots=True)
class LotDraw:
    lot_id: str
    held: int
    consumed: int


@dataclass(frozen=True, slots=True)
class Reservation:
    reservation_id: str
    account_id: str
    amount: int
    status: str  # ACTIVE, COMMITTED, RELEASED, EXPIRED
    committed_amount: int
    create_time: datetime | None
    expire_time: datetime | None
    metadata: dict[str, str] = field(default_factory=dict)
    feature: str = ""  # a hold of a feature's units: its feature, and the price it keeps
    units: int = 0
    finish_time: datetime | None = None  # when it was committed, released or expired
    release_reason: str = ""
    refunded_amount: int = 0
    member_account_id: str = ""  # a hold on an organisation's pool: the member's
    draws: tuple[LotDraw, ...] = ()  # which lots it holds or took, and how much of each
    cost: int = 0  # a feature's hold: what its units cost, at `rate_card_version` and `plan`
    rate_card_version: str = ""
    plan: str = ""


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    plan: str
    status: str  # ACTIVE, FROZEN, CLOSED
    create_time: datetime | None


@dataclass(frozen=True, slots=True)
class Lot:
    """Credits of one grant: what is left of them, what holds hold, when they expire."""

    lot_id: str
    grant_type: str
    priority: int
    expire_time: datetime | None
    amount: int
    remaining: int
    held: int
    expired: bool
    grant_entry_id: str
    create_time: datetime | None


@dataclass(frozen=True, slots=True)
class AccountDetails:
    """GetBalance in full: the balance, the account, its lots (`lots_truncated`: more than
    were listed), what expires within the window asked, lifetime totals by kind, and for an
    organisation's member its standing and its pool's balance."""

    balance: Balance
    account: Account
    lots: tuple[Lot, ...]
    lots_truncated: bool
    expiring_amount: int
    totals: dict[str, int]  # purchased, granted_free, refunded, used, expired, ...
    granted_by_type: dict[str, int]
    member: Member | None
    pool_balance: Balance | None


@dataclass(frozen=True, slots=True)
class EnsureAccountResult:
    account: Account
    created: bool
    balance: Balance


@dataclass(frozen=True, slots=True)
class GrantResult:
    entry_id: str
    lot_id: str
    balance: Balance


@dataclass(frozen=True, slots=True)
class HoldResult:
    """What CheckAndReserve, Commit, Release and ExtendReservation answer."""

    reservation: Reservation
    balance: Balance | None


@dataclass(frozen=True, slots=True)
class Quote:
    cost: int
    feature: str
    units: int
    rate_card_version: str
    plan: str
    affordable: bool
    balance: Balance | None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    entry_id: str
    account_id: str
    entry_type: str  # GRANT, USAGE, EXPIRY, ADJUSTMENT, TRANSFER_OUT, TRANSFER_IN, REFUND
    amount: int
    balance_after: int
    create_time: datetime | None
    grant_type: str = ""
    reservation_id: str = ""
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    feature: str = ""
    units: int = 0
    actor: str = ""  # the principal that made the change
    lot_id: str = ""
    transfer_id: str = ""
    rate_card_version: str = ""


@dataclass(frozen=True, slots=True)
class HistoryPage:
    entries: tuple[LedgerEntry, ...]
    next_page_token: str  # "": the last page


@dataclass(frozen=True, slots=True)
class Event:
    """What happened to credits (docs/events.md): `data` is the event's JSON object."""

    event_id: int
    cursor: str
    event_type: str  # GRANTED, RESERVED, COMMITTED, LOW_BALANCE, ...
    account_id: str
    create_time: datetime | None
    data: dict[str, object]


@dataclass(frozen=True, slots=True)
class EntriesResult:
    """What Adjust and Refund answer: the entries written and the balance after them."""

    entries: tuple[LedgerEntry, ...]
    balance: Balance


@dataclass(frozen=True, slots=True)
class TransferResult:
    transfer_id: str
    from_entries: tuple[LedgerEntry, ...]
    to_entries: tuple[LedgerEntry, ...]
    from_balance: Balance
    to_balance: Balance


@dataclass(frozen=True, slots=True)
class AccountChange:
    """What SetAccountStatus and ChangePlan answer."""

    account: Account
    changed: bool
    write_off_entries: tuple[LedgerEntry, ...]


@dataclass(frozen=True, slots=True)
class ReservationPage:
    reservations: tuple[Reservation, ...]
    next_page_token: str  # "": the last page


@dataclass(frozen=True, slots=True)
class ReserveItem:
    """One hold of a batch: an amount, or a feature's units; a key is made if none is given
    (and kept for the batch's retries)."""

    account_id: str
    amount: int | None = None
    feature: str | None = None
    units: int | None = None
    ttl_s: float | None = None
    idempotency_key: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommitItem:
    """One commit of a batch: what the hold held, `amount`, or `units` at its price."""

    reservation_id: str
    amount: int | None = None
    units: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BalanceAlert:
    """An account's low-balance rule (`low_balance_credits` or `low_balance_percent`, or
    neither), whether it is the account's own, its threshold in credits now, and where its
    available credits stand (OK, LOW, DEPLETED; "" not yet known)."""

    account_id: str
    low_balance_credits: int
    low_balance_percent: int
    custom: bool
    threshold: int
    last_top_up: int
    level: str


# --- the rate card and usage -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Price:
    """What one call of a feature costs: `cost_per_call`, plus a credit per
    `units_per_credit` units (0: units do not count) rounded UP, DOWN or NEAREST, and at
    least `minimum_charge`."""

    cost_per_call: int
    units_per_credit: int
    rounding: str
    minimum_charge: int


@dataclass(frozen=True, slots=True)
class FeaturePrice:
    feature: str
    description: str
    unit: str
    price: Price
    plan_prices: dict[str, Price]  # plans that pay otherwise (a card asked for no plan)


@dataclass(frozen=True, slots=True)
class RateCard:
    version: str
    plan: str  # whose prices `price` is; "": each feature's own
    features: tuple[FeaturePrice, ...]


@dataclass(frozen=True, slots=True)
class RateCardReload:
    version: str
    previous_version: str
    file: str
    feature_count: int


@dataclass(frozen=True, slots=True)
class UsageTotal:
    feature: str  # "": usage reserved by amount
    credits: int
    units: int
    calls: int


@dataclass(frozen=True, slots=True)
class UsageBucket:
    start_time: datetime | None
    usage: UsageTotal


@dataclass(frozen=True, slots=True)
class AccountSpend:
    account_id: str
    credits: int
    calls: int


@dataclass(frozen=True, slots=True)
class MemberSpend:
    pool_account_id: str
    member_account_id: str
    credits: int
    calls: int


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """Usage over [start_time, end_time): by bucket (HOUR, DAY, MONTH) and feature, the
    range's totals by feature, the accounts that spent most, and (by_member) pools' spend by
    member."""

    start_time: datetime | None
    end_time: datetime | None
    bucket_size: str
    buckets: tuple[UsageBucket, ...]
    features: tuple[UsageTotal, ...]
    top_accounts: tuple[AccountSpend, ...]
    members: tuple[MemberSpend, ...]


# --- subscriptions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Allocation:
    """The credits granted each period (MONTH, or DAYS of `period_days`), and what of a
    period's unused credits carries into the next (NONE, CAPPED at `rollover_cap`, FULL)."""

    credits: int
    period: str
    period_days: int
    rollover: str
    rollover_cap: int


@dataclass(frozen=True, slots=True)
class Subscription:
    subscription_id: str
    account_id: str
    plan: str
    allocation: Allocation
    status: str  # ACTIVE, CANCELED
    start_time: datetime | None
    last_period: int
    next_grant_time: datetime | None
    next_plan: str  # "": no change waits for the next period
    cancel_time: datetime | None
    create_time: datetime | None


@dataclass(frozen=True, slots=True)
class SubscriptionResult:
    """What Subscribe, ChangeSubscription and CancelSubscription answer: the subscription
    after the call, whether it changed, the entries written and the balance after them."""

    subscription: Subscription
    changed: bool
    entries: tuple[LedgerEntry, ...]
    balance: Balance


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """GetSubscription: the subscription and the period granted last."""

    subscription: Subscription
    period_start_time: datetime | None
    period_end_time: datetime | None
    period_granted_credits: int


# --- organisations ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Organization:
    organization_id: str
    pool_account_id: str
    create_time: datetime | None
    member_count: int


@dataclass(frozen=True, slots=True)
class OrganizationResult:
    organization: Organization
    created: bool


@dataclass(frozen=True, slots=True)
class Member:
    """A member's caps on its pool (None: no cap), what its holds hold, what it used this
    calendar month and in all, and what its caps leave it (None without caps)."""

    account_id: str
    organization_id: str
    pool_account_id: str
    period_cap: int | None
    total_cap: int | None
    held: int
    period_used: int
    total_used: int
    remaining: int | None
    create_time: datetime | None


@dataclass(frozen=True, slots=True)
class MemberChange:
    member: Member
    changed: bool


@dataclass(frozen=True, slots=True)
class OrganizationPage:
    organization: Organization
    pool_balance: Balance
    members: tuple[Member, ...]
    next_page_token: str  # "": the last page


# --- webhooks --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a webhook endpoint did not take; `body_json` is the body as it was sent."""

    dead_letter_id: str
    endpoint: str
    event_id: int
    event_type: str
    account_id: str
    attempts: int
    last_error: str
    status: str  # DEAD, REDELIVERED
    create_time: datetime | None
    update_time: datetime | None
    body_json: str


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    dead_letters: tuple[DeadLetter, ...]
    next_page_token: str  # "": the last page
