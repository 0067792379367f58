"""Entities, commands and results of the credits ledger.

Amounts are whole credits as Python ints, stored as BIGINT. Times are timezone-aware datetimes
taken from the database clock.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

AMOUNT_MIN = 1
AMOUNT_MAX = 10**12
# An account's balance never exceeds this; a grant that would pass it is declined.
BALANCE_MAX = 10**15


class GrantType(enum.Enum):
    SIGNUP = "SIGNUP"
    PURCHASE = "PURCHASE"
    PROMO = "PROMO"
    REFERRAL = "REFERRAL"
    REFUND = "REFUND"
    ADMIN_GRANT = "ADMIN_GRANT"
    SUBSCRIPTION = "SUBSCRIPTION"


class EntryType(enum.Enum):
    GRANT = "GRANT"
    USAGE = "USAGE"


class ReservationStatus(enum.Enum):
    ACTIVE = "ACTIVE"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True, slots=True)
class BalanceSnapshot:
    account_id: str
    balance: int
    reserved: int
    active_reservation_count: int
    lifetime_granted: int
    lifetime_used: int

    @property
    def available(self) -> int:
        return self.balance - self.reserved


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    entry_id: int
    account_id: str
    entry_type: EntryType
    grant_type: GrantType | None
    amount: int
    balance_after: int
    reservation_id: str | None
    reason: str
    metadata: Mapping[str, str]
    actor: str
    create_time: datetime


@dataclass(frozen=True, slots=True)
class Reservation:
    reservation_id: str
    account_id: str
    amount: int
    status: ReservationStatus
    committed_amount: int | None
    create_time: datetime
    expire_time: datetime
    finish_time: datetime | None
    metadata: Mapping[str, str]


# Commands carry exactly what the caller sent (after validation); idempotency hashes them.


@dataclass(frozen=True, slots=True)
class GrantCommand:
    account_id: str
    amount: int
    grant_type: GrantType
    idempotency_key: str
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReserveCommand:
    account_id: str
    amount: int
    idempotency_key: str
    ttl_ms: int | None = None  # None: the server's default TTL
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommitCommand:
    reservation_id: str
    amount: int | None = None  # None: the held amount
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReleaseCommand:
    reservation_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    account_id: str
    page_size: int
    page_token: str = ""
    entry_types: frozenset[EntryType] = frozenset()
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class GrantResult:
    entry: LedgerEntry
    balance: BalanceSnapshot


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
