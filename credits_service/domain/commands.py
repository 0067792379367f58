"""What the use cases take (commands and queries) and what they answer (results)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime

from credits_service.domain.model import (
    Account,
    AccountStatus,
    BalanceSnapshot,
    EntryType,
    GrantType,
    LedgerEntry,
    Lot,
    Reservation,
    ReservationStatus,
)
from credits_service.domain.organizations import Member, MemberCaps, Organization
from credits_service.domain.rates import Quote
from credits_service.domain.rows import AccountSpend, MemberSpend, UsageRow
from credits_service.domain.subscriptions import Subscription


@dataclass(frozen=True, slots=True)
class GrantCommand:
    account_id: str
    amount: int
    grant_type: GrantType
    idempotency_key: str
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Fields added after keys were first stored: left out of the request hash while unset, so a
    # retry of a request made before they existed still matches its stored key.
    expire_time: datetime | None = field(default=None, metadata={"hash_omit_none": True})
    priority: int | None = field(default=None, metadata={"hash_omit_none": True})


@dataclass(frozen=True, slots=True)
class ReserveCommand:
    account_id: str
    amount: int  # 0 with a feature: its cost, by the rate card
    idempotency_key: str
    ttl_ms: int | None = None  # None: the server's default TTL
    metadata: Mapping[str, str] = field(default_factory=dict)
    # A hold of a feature's estimated units instead of an amount (left out of the request
    # hash while None, as idempotency.request_hash does on its fast path)
    feature: str | None = field(default=None, metadata={"hash_omit_none": True})
    units: int | None = field(default=None, metadata={"hash_omit_none": True})


@dataclass(frozen=True, slots=True)
class CommitCommand:
    reservation_id: str
    amount: int | None = None  # None: the held amount, or the cost of `units`
    metadata: Mapping[str, str] = field(default_factory=dict)
    # a hold of a feature: the actual units, charged at the hold's price
    units: int | None = field(default=None, metadata={"hash_omit_none": True})


@dataclass(frozen=True, slots=True)
class ReleaseCommand:
    reservation_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ExtendCommand:
    reservation_id: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class BalanceQuery:
    account_id: str
    expiring_within_ms: int | None = None  # None: no expiring amount asked for


@dataclass(frozen=True, slots=True)
class ReservationsQuery:
    account_id: str
    page_size: int
    page_token: str = ""
    statuses: frozenset[ReservationStatus] = frozenset()


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    account_id: str
    page_size: int
    page_token: str = ""
    entry_types: frozenset[EntryType] = frozenset()
    start_time: datetime | None = None
    end_time: datetime | None = None
    grant_types: frozenset[GrantType] = frozenset()


@dataclass(frozen=True, slots=True)
class EnsureAccountCommand:
    account_id: str
    plan: str = ""  # empty: the default plan


@dataclass(frozen=True, slots=True)
class SetAccountStatusCommand:
    account_id: str
    status: AccountStatus
    reason: str
    write_off_balance: bool = False  # CLOSED: take the balance off first, with entries


@dataclass(frozen=True, slots=True)
class ChangePlanCommand:
    account_id: str
    plan: str
    reason: str


class AdjustMode(enum.Enum):
    ADD = "ADD"  # amount: credits to add, into a new lot
    DEDUCT = "DEDUCT"  # amount: credits to take, from lots in consumption order
    SET = "SET"  # amount: the balance to reach, by adding or deducting the difference


@dataclass(frozen=True, slots=True)
class AdjustCommand:
    account_id: str
    mode: AdjustMode
    amount: int
    idempotency_key: str
    reason: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    expected_balance: int | None = None  # SET only: compare-and-set
    expire_time: datetime | None = None  # ADD, or a SET that adds: the new lot's expiry
    # a deduction may pass -credit_limit (left out of the request hash while False)
    allow_negative: bool = field(default=False, metadata={"hash_omit_false": True})


@dataclass(frozen=True, slots=True)
class TransferCommand:
    from_account_id: str
    to_account_id: str
    amount: int
    idempotency_key: str
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RefundCommand:
    idempotency_key: str
    reservation_id: str | None = None  # one of reservation_id and usage_entry_id
    usage_entry_id: int | None = None
    amount: int | None = None  # None: all that is left to refund
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GrantResult:
    entry: LedgerEntry
    balance: BalanceSnapshot
    lot: Lot | None = None  # None only in responses stored before lots existed


@dataclass(frozen=True, slots=True)
class ReserveResult:
    reservation: Reservation
    balance: BalanceSnapshot


@dataclass(frozen=True, slots=True)
class CommitResult:
    reservation: Reservation
    entry: LedgerEntry
    balance: BalanceSnapshot


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    reservation: Reservation
    balance: BalanceSnapshot


@dataclass(frozen=True, slots=True)
class HistoryPage:
    entries: tuple[LedgerEntry, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class BalanceReport:
    account: Account
    balance: BalanceSnapshot
    totals: Mapping[str, int]  # lifetime totals by kind (model.total_kind)
    lots: tuple[Lot, ...]
    lots_truncated: bool
    expiring_amount: int
    # a member of an organisation: its standing, its pool's balance, and the date its caps
    # are counted at
    member: Member | None = None
    pool: BalanceSnapshot | None = None
    today: date | None = None


@dataclass(frozen=True, slots=True)
class ReservationPage:
    reservations: tuple[Reservation, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class EnsureAccountResult:
    account: Account
    created: bool  # by this call
    balance: BalanceSnapshot
    welcome: GrantResult | None  # the welcome grant, when this call created the account


@dataclass(frozen=True, slots=True)
class AccountChangeResult:
    account: Account  # as it is after the call
    changed: bool  # false: it was so already
    write_off_entries: tuple[LedgerEntry, ...] = ()  # a close's write-off of the balance


@dataclass(frozen=True, slots=True)
class AdjustResult:
    entries: tuple[LedgerEntry, ...]  # none when SET found the balance already there
    balance: BalanceSnapshot
    lot: Lot | None = None  # the lot an addition created


@dataclass(frozen=True, slots=True)
class TransferResult:
    transfer_id: str
    from_entries: tuple[LedgerEntry, ...]  # TRANSFER_OUT, one per lot the credits left
    to_entries: tuple[LedgerEntry, ...]  # TRANSFER_IN, one per lot they arrived in
    from_balance: BalanceSnapshot
    to_balance: BalanceSnapshot


@dataclass(frozen=True, slots=True)
class RefundResult:
    entries: tuple[LedgerEntry, ...]  # REFUND, one per lot the credits went to
    balance: BalanceSnapshot
    reservation: Reservation  # its refunded_amount after this refund
    lot: Lot | None = None  # the REFUND lot, when credits could not go back to their lots


@dataclass(frozen=True, slots=True)
class QuoteQuery:
    account_id: str
    feature: str
    units: int = 0


@dataclass(frozen=True, slots=True)
class QuoteResult:
    """What a call would cost the account, and whether it could place the hold now."""

    quote: Quote
    balance: BalanceSnapshot
    affordable: bool  # active, and available covers the cost


class UsageBucket(enum.Enum):
    """The size of a usage summary's buckets (UTC)."""

    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


# The most buckets a summary spans, by size: a month of hours, a year of days, ten years
BUCKETS_MAX = {UsageBucket.HOUR: 744, UsageBucket.DAY: 366, UsageBucket.MONTH: 120}
TOP_ACCOUNTS_MAX = 100
SUMMARY_ACCOUNTS_MAX = 100


@dataclass(frozen=True, slots=True)
class UsageQuery:
    start_time: datetime | None = None  # a whole hour; None: the current UTC month's start
    end_time: datetime | None = None  # a whole hour, excluded; None: the current hour's end
    bucket: UsageBucket = UsageBucket.DAY
    account_ids: tuple[str, ...] = ()  # none: every account
    plan: str = ""  # without account_ids: only usage of accounts while on this plan
    features: tuple[str, ...] = ()  # none: every feature ('' usage of an amount)
    top_accounts: int = 10
    # the usage of pools (account_ids: those pools; none: every pool) by member
    by_member: bool = field(default=False, metadata={"hash_omit_false": True})


@dataclass(frozen=True, slots=True)
class FeatureUsage:
    feature: str
    credits: int
    units: int
    calls: int


@dataclass(frozen=True, slots=True)
class UsageSummary:
    start_time: datetime
    end_time: datetime
    bucket: UsageBucket
    buckets: tuple[UsageRow, ...]  # by bucket, then feature
    features: tuple[FeatureUsage, ...]  # totals of the range, by feature
    top_accounts: tuple[AccountSpend, ...]  # most spent first
    members: tuple[MemberSpend, ...] = ()  # by_member: by pool, most spent first


@dataclass(frozen=True, slots=True)
class SubscribeCommand:
    account_id: str
    plan: str
    idempotency_key: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ChangeSubscriptionCommand:
    account_id: str
    plan: str
    idempotency_key: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CancelSubscriptionCommand:
    account_id: str
    idempotency_key: str
    immediately: bool = False  # False: at the end of the current period
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SubscriptionResult:
    """A subscription after a call, the entries the call wrote (allocations granted, plan
    moves' forgiven debt) and the account's balance after them."""

    subscription: Subscription
    changed: bool
    entries: tuple[LedgerEntry, ...]
    balance: BalanceSnapshot


@dataclass(frozen=True, slots=True)
class SubscriptionReport:
    """A subscription as GetSubscription reads it: with the period last granted and the
    credits granted for it."""

    subscription: Subscription
    period_start: datetime
    period_end: datetime
    period_granted: int


@dataclass(frozen=True, slots=True)
class CreateOrganizationCommand:
    organization_id: str
    pool_account_id: str  # the organisation's id when the caller names none
    plan: str = ""  # the pool account's, if it is created: the default plan when empty


@dataclass(frozen=True, slots=True)
class AddMemberCommand:
    organization_id: str
    account_id: str
    caps: MemberCaps = field(default_factory=MemberCaps)


@dataclass(frozen=True, slots=True)
class SetMemberCapsCommand:
    organization_id: str
    account_id: str
    caps: MemberCaps = field(default_factory=MemberCaps)


@dataclass(frozen=True, slots=True)
class RemoveMemberCommand:
    organization_id: str
    account_id: str


@dataclass(frozen=True, slots=True)
class OrganizationResult:
    organization: Organization
    created: bool


@dataclass(frozen=True, slots=True)
class MemberResult:
    """A member after a call (removed: as it was), and the service clock's date then (for
    its remaining caps)."""

    member: Member
    changed: bool
    now: datetime


@dataclass(frozen=True, slots=True)
class MemberPage:
    organization: Organization
    pool: BalanceSnapshot
    members: list[Member]
    next_page_token: str  # empty after the last member
    today: date
