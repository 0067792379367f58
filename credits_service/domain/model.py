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
# Lots are spent lowest priority number first; a grant without one gets the default.
PRIORITY_MIN = 0
PRIORITY_MAX = 100
PRIORITY_DEFAULT = 50


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
    EXPIRY = "EXPIRY"


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
    lifetime_expired: int = 0

    @property
    def available(self) -> int:
        return self.balance - self.reserved

    def holding(self, credits: int) -> BalanceSnapshot:
        """This balance with one more hold of `credits` (dataclasses.replace, without its
        per-call field introspection: the batch path calls it once an item)."""
        return BalanceSnapshot(
            self.account_id, self.balance, self.reserved + credits,
            self.active_reservation_count + 1, self.lifetime_granted, self.lifetime_used,
            self.lifetime_expired,
        )


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
    lot_id: int | None = None


@dataclass(frozen=True, slots=True)
class Lot:
    """The credits of one grant. `remaining` counts held credits too; `held` is what active
    holds drew. Once `expired`, the lot keeps only held credits (remaining == held)."""

    lot_id: int
    account_id: str
    source_type: GrantType | None  # None: the lot carrying a balance from before lots
    priority: int
    expire_time: datetime | None  # None: never expires
    amount: int
    remaining: int
    held: int
    expired: bool
    grant_entry_id: int | None
    create_time: datetime

    @property
    def free(self) -> int:
        return self.remaining - self.held


@dataclass(frozen=True, slots=True)
class LotDraw:
    """What one hold drew from one lot, and what its Commit consumed there."""

    lot_id: int
    held: int
    consumed: int | None = None


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
    draws: tuple[LotDraw, ...] = ()
    release_reason: str = ""


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
    balance: BalanceSnapshot
    lots: tuple[Lot, ...]
    lots_truncated: bool
    expiring_amount: int


@dataclass(frozen=True, slots=True)
class ReservationPage:
    reservations: tuple[Reservation, ...]
    next_page_token: str
