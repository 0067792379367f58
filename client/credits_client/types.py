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


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    plan: str
    status: str  # ACTIVE, FROZEN, CLOSED
    create_time: datetime | None


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
